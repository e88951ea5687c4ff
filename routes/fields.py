"""Reading plain YAML/JSON values into rules, refusing with the field's path (pure).

Shared by the document model (`routes.model`), the policy parsers (`routes.policies`) and the
migration model (`routes.migration`), so all refuse the same way: `RuleError(field, message, value)`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from routes.errors import RuleError
from routes.grammar import TOKEN_RE

# Names of services and routes.
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?$")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
HOST_RE = re.compile(rf"^(?:\*\.)?(?:{_LABEL}\.)*{_LABEL}$")
# A duration in the document: a number with a unit. repr() of a float may use an exponent, and the
# canonical print falls back to it, so the parser takes one too.
DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?(?:e[+-]?\d+)?)(ms|s|m|h)$")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
# Longer than any sensible timeout or interval; also keeps arithmetic on durations finite.
MAX_DURATION = 86_400.0


def type_name(value: object) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", int: "an integer",
            bool: "a boolean", float: "a number"}.get(type(value), type(value).__name__)


def mapping(value: object, where: str, allowed: Iterable[str]) -> Mapping[str, Any]:
    """`value` as a mapping whose keys are all in `allowed`; the top level is named `document`."""
    if not isinstance(value, Mapping):
        raise RuleError(where, f"must be a mapping, not {type_name(value)}", value)
    allowed_set = set(allowed)
    for key in value:
        if key not in allowed_set:
            raise RuleError(f"{where}.{key}" if where != "document" else str(key),
                            f"unknown field; allowed: {', '.join(sorted(allowed_set))}")
    return value


def string(value: object, where: str, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise RuleError(where, f"must be a string, not {type_name(value)}", value)
    if not empty and not value:
        raise RuleError(where, "must not be empty", value)
    return value


def rule_name(value: object, where: str) -> str:
    """The name of a service or route."""
    text = string(value, where)
    if not NAME_RE.match(text):
        raise RuleError(where, "must be 1-63 lower-case letters, digits, '.', '_' or '-', "
                        "starting and ending with a letter or digit", value)
    return text


def sequence(value: object, where: str) -> list[Any]:
    """`value` as a list (YAML sequences arrive as lists; a tuple is taken from Python callers)."""
    if not isinstance(value, list | tuple):
        raise RuleError(where, f"must be a list, not {type_name(value)}", value)
    return list(value)


def boolean(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise RuleError(where, "must be true or false", value)
    return value


def integer(value: object, where: str, low: int, high: int, what: str = "an integer") -> int:
    """A whole number in [low, high]; booleans are refused (YAML `yes` is not 1)."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise RuleError(where, f"must be {what} from {low} to {high}", value)
    return value


def number(value: object, where: str, low: float, high: float) -> float:
    """A finite number in [low, high], as a float."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) \
            or not low <= value <= high:
        raise RuleError(where, f"must be a number from {low:g} to {high:g}", value)
    return float(value)


def header_name(value: object, where: str) -> str:
    name = string(value, where)
    if not TOKEN_RE.match(name):
        raise RuleError(where, "is not a valid header name", value)
    return name


def plain_path(value: object, where: str) -> str:
    path = string(value, where)
    if not path.startswith("/"):
        raise RuleError(where, "must start with '/'", value)
    if any(c in path for c in "?#") or any(ord(c) <= 0x20 or ord(c) >= 0x7f for c in path):
        raise RuleError(where, "must be a plain path: no query, fragment, spaces or control "
                        "characters", value)
    return path


def duration(value: object, where: str, *, zero: bool = False) -> float:
    """Seconds from a number (seconds) or a string with a unit: "250ms", "1.5s", "2m", "1h".

    Positive, or with `zero` also 0; at most a day.
    """
    if isinstance(value, str):
        found = DURATION_RE.match(value.strip())
        if found is None:
            raise RuleError(where, "must be a duration: seconds, or a number with ms, s, m or h "
                            "(250ms, 1.5s, 2m)", value)
        number_text, unit = found.groups()
        # Dividing by 1000 (not multiplying by 0.001) keeps "250ms" exactly 250 / 1000.
        seconds = float(number_text) / 1000 if unit == "ms" else float(number_text) * _UNITS[unit]
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise RuleError(where, f"must be a duration (250ms, 1.5s, 2m), not {type_name(value)}", value)
    if not math.isfinite(seconds) or seconds > MAX_DURATION:
        raise RuleError(where, "must be at most 24h", value)
    if seconds < 0 or (seconds == 0 and not zero):
        raise RuleError(where, "must be 0 or more" if zero else "must be more than 0", value)
    return seconds


def format_duration(seconds: float) -> str:
    """The canonical text of a duration: the largest of h, m, s that holds it as a whole number
    ("2m", "5s"), else seconds with a fraction ("1.5s"), or whole milliseconds below a second
    ("250ms"). `duration()` reads it back to the same float.
    """
    for unit in ("h", "m", "s"):
        factor = _UNITS[unit]
        count = seconds / factor
        if count >= 1 and count == int(count) and int(count) * factor == seconds:
            return f"{int(count)}{unit}"
    if seconds < 1:
        millis = round(seconds * 1000)
        if millis >= 1 and millis / 1000 == seconds:
            return f"{millis}ms"
    if seconds == 0:
        return "0s"
    # repr() is the shortest text that reads back as the same float
    return f"{seconds!r}s"


def host_port(value: object, where: str) -> str:
    """A host name (no wildcard), optionally with `:port`, lower-cased: a Host header to send."""
    text = string(value, where).lower()
    host, colon, port = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
    if not HOST_RE.match(host) or host.startswith("*") or \
            (colon and not (port.isdigit() and 0 < int(port) < 65536)):
        raise RuleError(where, "must be a host name, optionally with :port", value)
    return text
