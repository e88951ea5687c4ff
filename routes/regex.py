"""Linear-time regular expressions (RE2) for every pattern that runs on request input.

Route predicates (`match.path_regex`, the `regex` of header, query and cookie predicates) and
regex path rewrites (`rewrite.path_regex` with `replacement`) are written by operators but run, on
the event loop, against whatever clients send. Python's `re` backtracks: `^/re/(a+)+$` took 1.1 s
on a 26-character path and about 40 s on thirty (issue 11). RE2, the engine Envoy uses for the same
job, runs in time linear in the input whatever the pattern, at the price of refusing what needs
backtracking: backreferences (`\\1`, `(?P=name)`), lookaround (`(?=`, `(?!`, `(?<=`, `(?<!`),
atomic groups, possessive quantifiers, conditionals, `(?x)` verbose mode. Counted repetition is
capped at 1000 and a pattern's memory (program and DFA cache) at 2 MiB.

The dialect is RE2's (https://github.com/google/re2/wiki/Syntax), which is Python's for everything
routes usually hold (classes, groups, `(?P<name>...)` and `(?<name>...)`, `(?i)`, `\\A`, `\\d`), with
these differences, each handled here so that nothing changes meaning silently:

- Python's `\\Z` (end of text) is RE2's `\\z`, Python's `\\u00e9` RE2's `\\x{00e9}`: both spellings
  are accepted and translated.
- `{,n}` is "0 to n" in Python but literal text in RE2: refused (write `{0,n}`).
- `\\C` (one byte, possibly half a character) is refused.
- `\\d \\w \\s \\b` are ASCII-only in RE2 (Unicode in Python), and `$` matches only at the very end
  (Python also before a final newline). Neither matters for normalised paths, which are ASCII.

`Regex` compiles a pattern once (the route table is built off the request path) and answers
`found(text)`; `Substitution` is a regex rewrite with a Python-style replacement template
(`\\1`-`\\99`, `\\g<n>`, `\\g<name>`, `\\\\`). A pattern or template the engine refuses raises
`RegexError`, which the rule model turns into `RuleError(field, message, value)`, a 422.

The module calls RE2's pybind binding (`re2._re2`) directly: the `re2` module's `search` builds a
Match object and translates byte offsets back to characters on every call (about 20 us against 3 us
here), and a route lookup needs only a yes or no.
"""

from __future__ import annotations

from typing import Any

# RE2 is loaded with the first pattern (`_engine()`): a process whose tables hold no regex (most
# gateways) does not pay its ~2.4 MiB of resident memory.
_re2: Any = None
_UNANCHORED: Any = None
_NO_MATCH = -1
# Two digits at most, as in Python: `\10` is group 10, never group 1 followed by `0`.
_MAX_GROUP_DIGITS = 2
_HEX = frozenset("0123456789abcdefABCDEF")
_MAX_MEM = 2 << 20
# RE2's reasons for Python (PCRE) syntax it does not have, as opposed to a broken pattern.
_UNSUPPORTED = ("invalid perl operator", "invalid escape sequence", "bad repetition operator")


class RegexError(ValueError):
    """A pattern or replacement template Peel cannot run; the message says why."""


def _engine() -> Any:
    """RE2's pybind binding, imported on first use."""
    global _re2, _UNANCHORED
    if _re2 is None:
        from re2 import _re2 as binding  # type: ignore[import-untyped]

        _UNANCHORED = binding.RE2.Anchor.UNANCHORED
        _re2 = binding
    return _re2


def _options(*, capture: bool) -> Any:
    options = _engine().RE2.Options()
    # RE2 writes every refused pattern to stderr through absl; the refusal is the caller's answer.
    options.log_errors = False
    options.never_capture = not capture
    # Program plus DFA cache, per regex. RE2's default (8 MiB) let a pattern with a large DFA grow by
    # about 3 MiB under hostile input, per route; at 2 MiB the cache stays small and RE2 falls back
    # to its NFA, still linear, while ordinary route patterns match as fast (measured: 1.6 us).
    options.max_mem = _MAX_MEM
    return options


def _translate(pattern: str) -> str:
    """The pattern in RE2's dialect, or RegexError for Python syntax RE2 would read differently."""
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1:i + 2]
            if nxt == "C":
                raise RegexError("\\C (any byte) is not supported")
            if nxt == "Z" and not in_class:
                out.append("\\z")  # Python's end of text
            elif nxt in ("u", "U"):
                digits = 4 if nxt == "u" else 8
                code = pattern[i + 2:i + 2 + digits]
                if len(code) != digits or any(ch not in _HEX for ch in code):
                    raise RegexError(f"bad escape {pattern[i:i + 2 + digits]!r}: \\{nxt} takes {digits} "
                                     "hex digits")
                out.append(f"\\x{{{code}}}")  # Python's \u00e9 is RE2's \x{00e9}
                i += 2 + digits
                continue
            else:
                out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
            # A `]` first in the class (after an optional `^`) is a literal, not the end.
            j = i + 1
            if pattern[j:j + 1] == "^":
                j += 1
            if pattern[j:j + 1] == "]":
                out.append(pattern[i:j + 1])
                i = j + 1
                continue
        elif c == "{" and pattern[i + 1:i + 2] == ",":
            j = i + 2
            while j < n and pattern[j].isdigit():
                j += 1
            if j > i + 2 and pattern[j:j + 1] == "}":
                raise RegexError(f"write {{0,{pattern[i + 2:j]}}}: RE2 reads "
                                 f"{pattern[i:j + 1]} as literal text")
        out.append(c)
        i += 1
    return "".join(out)


def _program(pattern: str, *, capture: bool) -> Any:
    program = _engine().RE2(_translate(pattern).encode("utf-8", "surrogatepass"), _options(capture=capture))
    if not program.ok():
        error = program.error()
        reason = error.decode("utf-8", "replace") if isinstance(error, bytes) else str(error)
        if reason.startswith(_UNSUPPORTED):
            reason += " (RE2 syntax: no backreferences, lookaround, atomic groups or possessive quantifiers)"
        raise RegexError(reason)
    return program


class Regex:
    """A compiled pattern that is searched (unanchored: anchor it with `^` and `$` yourself).

    Built once per table; `found` is the per-request call, linear in the length of `text`.
    """

    __slots__ = ("_match", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._match = _program(pattern, capture=False).Match

    def found(self, text: str) -> bool:
        """Whether the pattern matches anywhere in `text`."""
        data = text.encode("utf-8", "surrogatepass")
        return bool(self._match(_UNANCHORED, data, 0, len(data))[0][0] != _NO_MATCH)

    def __repr__(self) -> str:
        return f"Regex({self.pattern!r})"


def parse_template(template: str, groups: int, names: dict[str, int]) -> tuple[bytes | int, ...]:
    """A replacement template as pieces: literal UTF-8 bytes and group numbers.

    The syntax is Python's `re.sub`, limited to what builds a path: `\\1` to `\\99`, `\\g<n>`,
    `\\g<name>` and `\\\\` for a backslash. Any other escape is refused: Python would turn `\\r\\n`,
    `\\x0a` or `\\0` into control characters in the request line sent upstream.
    """
    pieces: list[bytes | int] = []
    literal: list[str] = []

    def group(index: int, spelled: str) -> None:
        if index > groups:
            raise RegexError(f"invalid group reference {spelled}: path_regex has {groups} group(s)")
        pieces.append("".join(literal).encode("utf-8"))
        literal.clear()
        pieces.append(index)

    i, n = 0, len(template)
    while i < n:
        c = template[i]
        if c != "\\":
            literal.append(c)
            i += 1
            continue
        nxt = template[i + 1:i + 2]
        if nxt == "\\":
            literal.append("\\")
            i += 2
        elif nxt.isascii() and nxt.isdigit() and nxt != "0":
            j = i + 1
            while j < n and j - i - 1 < _MAX_GROUP_DIGITS and template[j].isascii() and template[j].isdigit():
                j += 1
            group(int(template[i + 1:j]), template[i:j])
            i = j
        elif nxt == "g" and template[i + 2:i + 3] == "<":
            end = template.find(">", i + 3)
            if end < 0:
                raise RegexError("missing > after \\g<")
            name = template[i + 3:end]
            if name.isascii() and name.isdigit():
                group(int(name), template[i:end + 1])
            elif name in names:
                group(names[name], template[i:end + 1])
            else:
                raise RegexError(f"unknown group name {name!r} in {template[i:end + 1]}")
            i = end + 1
        else:
            raise RegexError(f"bad escape {template[i:i + 2]!r}: a backslash starts only \\1-\\99, "
                             "\\g<n>, \\g<name> or \\\\")
    pieces.append("".join(literal).encode("utf-8"))
    return tuple(p for p in pieces if p != b"")


class Substitution:
    """Replace the first match of a pattern in a text with a template (`re.sub(..., count=1)`).

    Groups that did not take part in the match expand to nothing, as in Python. The work per call
    is one RE2 match and a join of slices: linear in the text.
    """

    __slots__ = ("_match", "_pieces", "pattern", "template")

    def __init__(self, pattern: str, template: str) -> None:
        """Raises RegexError for the pattern, its subclass TemplateError for the template."""
        self.pattern = pattern
        self.template = template
        program = _program(pattern, capture=True)
        names = {name.decode("utf-8") if isinstance(name, bytes) else str(name): int(index)
                 for name, index in program.NamedCapturingGroups()}
        try:
            self._pieces = parse_template(template, int(program.NumberOfCapturingGroups()), names)
        except RegexError as exc:
            raise TemplateError(str(exc)) from None
        self._match = program.Match

    def __call__(self, text: str) -> str:
        data = text.encode("utf-8", "surrogatepass")
        spans: list[tuple[int, int]] = self._match(_UNANCHORED, data, 0, len(data))
        start, end = spans[0]
        if start == _NO_MATCH:
            return text
        out = [data[:start]]
        for piece in self._pieces:
            if isinstance(piece, int):
                g_start, g_end = spans[piece]
                if g_start != _NO_MATCH:
                    out.append(data[g_start:g_end])
            else:
                out.append(piece)
        out.append(data[end:])
        return b"".join(out).decode("utf-8", "surrogatepass")


class TemplateError(RegexError):
    """The pattern compiled but the replacement template does not fit it."""
