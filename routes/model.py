"""The rule model: services and routes as values, parsed from and printed to the declarative document.

`Document.parse(data)` takes what YAML or JSON gave (plain dicts and lists) and either returns a
valid document or raises `RuleError` naming the first wrong field, such as
`routes[orders].match.path_regex`, and the value. `Document.to_dict()` prints the canonical form:
defaults left out, so `export` then `apply` changes nothing.

`Document.parse(data, stored=True)` reads a document from the store, which an older Peel may have
written with a regex RE2 refuses (a lookahead, a backreference: `routes.regex`). Exactly that
refusal is then kept instead of raised: the route holds the pattern text, so it is exported as
stored, and lists the refusal in `Route.refused_regex`; the compiler makes such a route answer 503
without running the pattern. Every write parses strictly, and `Document.build` (every edit) refuses
a document that still holds such a route, so no new version carries one.

Nothing here does I/O. Cross-references (unknown service, duplicate names, two routes with the same
match and priority) are checked by `Document.parse` too, so a document that parses is one that can be
stored and compiled.
"""

from __future__ import annotations

import re
import sys
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from routes.errors import RuleError
from routes.fields import (
    HOST_RE,
    NAME_RE,
    boolean,
    header_name,
    mapping,
    plain_path,
    rule_name,
    sequence,
    string,
    type_name,
)
from routes.grammar import TOKEN_RE
from routes.migration import Migration
from routes.policies import Authorization, Buffering, RateLimit, RetryPolicy, Timeouts
from routes.regex import Regex, RegexError, Substitution
from routes.revocations import Mesh, Revocation, canonical, parse_revocations
from routes.services import Endpoint, Service

# Endpoint and Service live in routes.services (and NAME_RE in routes.fields); importers of the
# document model find them here.
__all__ = ["HEADER_VALUE_RE", "NAME_RE", "PATH_KINDS", "Document", "Endpoint", "FieldMatch", "HeaderRules",
           "Match", "RefusedRegex", "Rewrite", "Route", "Service"]

TEMPLATE_PARAM_RE = re.compile(r"^\{[A-Za-z_][A-Za-z0-9_]*\}$")
# Header values may hold visible ASCII, spaces and tabs (RFC 9110 field-value, without obs-text).
HEADER_VALUE_RE = re.compile(r"^[\t\x20-\x7e]*$")
PATH_KINDS = ("path", "path_prefix", "path_template", "path_regex")


@dataclass(frozen=True, slots=True)
class RefusedRegex:
    """A pattern or replacement in a stored route that this Peel will not run (see the module doc).

    `field` is the document path (`routes[orders].match.path_regex`), `reason` RE2's refusal and
    `value` the stored text.
    """

    route: str
    field: str
    reason: str
    value: str

    def error(self) -> RuleError:
        """The 422 a write that still holds the pattern gets, with the fix."""
        return RuleError(self.field, f"{self.reason}; this rule was stored before Peel ran regexes "
                         f"on RE2: fix it with `peel routes set {self.route} -f route.yaml` (or "
                         "delete the route) before any other change", self.value)

    def warning(self) -> str:
        """One log line for an operator: the route, the field, what happens and the fix."""
        return (f"route {self.route} cannot be served: {self.field} {self.reason} (got "
                f"{self.value!r}); its requests are answered 503 until it is fixed with "
                f"`peel routes set {self.route} -f route.yaml`")


# Where a lenient (stored) parse collects the refusals of one route; None: raise them (writes).
Refusals = list[RuleError] | None


def _refuse(error: RuleError, refused: Refusals) -> None:
    if refused is None:
        raise error
    refused.append(error)


def _regex(value: object, where: str, refused: Refusals = None) -> str:
    """A pattern RE2 runs (`routes.regex`: linear time on request input, no backtracking syntax).

    With `refused` (a stored document), a pattern RE2 refuses is collected there and kept as text.
    """
    pattern = string(value, where)
    try:
        Regex(pattern)
    except RegexError as exc:
        _refuse(RuleError(where, f"is not a valid regular expression: {exc}", value), refused)
    return pattern


def _header_value(value: object, where: str) -> str:
    text = string(value, where, empty=True)
    if not HEADER_VALUE_RE.match(text):
        raise RuleError(where, "may hold only visible ASCII characters, spaces and tabs", value)
    return text


# ---------------------------------------------------------------------------------------------
# Routes


@dataclass(frozen=True, slots=True)
class FieldMatch:
    """A predicate on one header, query parameter or cookie.

    Exactly one of `value` (exact), `regex` (searched, anchor it yourself) or `present` applies.
    """

    name: str
    value: str | None = None
    regex: str | None = None
    present: bool | None = None

    @classmethod
    def parse(cls, data: object, where: str, *, header: bool, refused: Refusals = None) -> FieldMatch:
        m = mapping(data, where, ("name", "value", "regex", "present"))
        if "name" not in m:
            raise RuleError(f"{where}.name", "is required")
        check = header_name if header else string
        name = check(m["name"], f"{where}.name")
        given = [k for k in ("value", "regex", "present") if k in m]
        if len(given) != 1:
            raise RuleError(where, "needs exactly one of value, regex or present", dict(m))
        if "value" in m:
            return cls(name, value=string(m["value"], f"{where}.value", empty=True))
        if "regex" in m:
            return cls(name, regex=_regex(m["regex"], f"{where}.regex", refused))
        if not isinstance(m["present"], bool):
            raise RuleError(f"{where}.present", "must be true or false", m["present"])
        return cls(name, present=m["present"])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.value is not None:
            out["value"] = self.value
        elif self.regex is not None:
            out["regex"] = self.regex
        else:
            out["present"] = self.present
        return out

    def key(self) -> tuple[str, str | None, str | None, bool | None]:
        return (self.name.lower(), self.value, self.regex, self.present)


_EMPTY_SET: frozenset[Any] = frozenset()


def _set(items: Sequence[Any]) -> frozenset[Any]:
    """`items` as a frozenset; the empty one shared (each is 216 bytes: five a route, mostly empty)."""
    return frozenset(items) if items else _EMPTY_SET


@dataclass(frozen=True, slots=True)
class Match:
    """The predicates of a route. An empty match accepts every request."""

    hosts: tuple[str, ...] = ()
    path: str | None = None
    path_prefix: str | None = None
    path_template: str | None = None
    path_regex: str | None = None
    methods: tuple[str, ...] = ()
    headers: tuple[FieldMatch, ...] = ()
    query: tuple[FieldMatch, ...] = ()
    cookies: tuple[FieldMatch, ...] = ()

    @classmethod
    def parse(cls, data: object, where: str, refused: Refusals = None) -> Match:
        m = mapping(data, where, ("hosts", *PATH_KINDS, "methods", "headers", "query", "cookies"))
        kinds = [k for k in PATH_KINDS if k in m]
        if len(kinds) > 1:
            raise RuleError(f"{where}.{kinds[1]}", f"only one of {', '.join(PATH_KINDS)} may be given")
        hosts: list[str] = []
        for i, h in enumerate(sequence(m.get("hosts", []), f"{where}.hosts")):
            host = string(h, f"{where}.hosts[{i}]").lower()
            if not HOST_RE.match(host):
                raise RuleError(f"{where}.hosts[{i}]", "must be a host name or *.suffix, without "
                                "a port", h)
            if host in hosts:
                raise RuleError(f"{where}.hosts[{i}]", "is listed twice", h)
            hosts.append(host)
        methods: list[str] = []
        for i, meth in enumerate(sequence(m.get("methods", []), f"{where}.methods")):
            method = string(meth, f"{where}.methods[{i}]")
            if not TOKEN_RE.match(method) or method.upper() != method:
                raise RuleError(f"{where}.methods[{i}]", "must be an upper-case method name", meth)
            if method in methods:
                raise RuleError(f"{where}.methods[{i}]", "is listed twice", meth)
            methods.append(method)
        path = plain_path(m["path"], f"{where}.path") if "path" in m else None
        prefix = plain_path(m["path_prefix"], f"{where}.path_prefix") if "path_prefix" in m else None
        if prefix is not None and len(prefix) > 1 and prefix.endswith("/"):
            raise RuleError(f"{where}.path_prefix", "must not end with '/' (prefixes match on "
                            "segment boundaries already)", prefix)
        template = None
        if "path_template" in m:
            template = plain_path(m["path_template"], f"{where}.path_template")
            names: set[str] = set()
            for seg in template.split("/")[1:]:
                if "{" in seg or "}" in seg:
                    if not TEMPLATE_PARAM_RE.match(seg):
                        raise RuleError(f"{where}.path_template", "a parameter must fill a whole "
                                        "segment, like /orders/{id}", template)
                    if seg in names:
                        raise RuleError(f"{where}.path_template", f"parameter {seg} is used twice",
                                        template)
                    names.add(seg)
        regex = _regex(m["path_regex"], f"{where}.path_regex", refused) if "path_regex" in m else None

        def preds(key: str, header: bool) -> tuple[FieldMatch, ...]:
            items = sequence(m.get(key, []), f"{where}.{key}")
            return tuple(FieldMatch.parse(d, f"{where}.{key}[{i}]", header=header, refused=refused)
                         for i, d in enumerate(items))

        return cls(tuple(hosts), path, prefix, template, regex, tuple(methods),
                   preds("headers", True), preds("query", False), preds("cookies", False))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.hosts:
            out["hosts"] = list(self.hosts)
        for kind in PATH_KINDS:
            value = getattr(self, kind)
            if value is not None:
                out[kind] = value
        if self.methods:
            out["methods"] = list(self.methods)
        for key in ("headers", "query", "cookies"):
            items: tuple[FieldMatch, ...] = getattr(self, key)
            if items:
                out[key] = [p.to_dict() for p in items]
        return out

    def key(self) -> tuple[object, ...]:
        """An order-insensitive identity: two matches with equal keys accept the same requests.

        The path's kind (its place in `PATH_KINDS`, or 4 for none) and pattern, then the hosts, the
        methods and the header, query and cookie predicates as sets, the trailing empty ones left
        out: a match with a path and nothing else (most routes) is two items. Computed when asked:
        only the route index keeps it, as a key (`RouteIndex.by_match`).
        """
        kind, pattern = next(((i, v) for i, v in enumerate((self.path, self.path_prefix,
                                                            self.path_template, self.path_regex))
                              if v is not None), (4, None))
        key: list[object] = [kind, pattern, _set(self.hosts), _set(self.methods),
                             _set([p.key() for p in self.headers]), _set([p.key() for p in self.query]),
                             _set([p.key() for p in self.cookies])]
        while key[-1] is _EMPTY_SET:
            key.pop()
        return tuple(key)


@dataclass(frozen=True, slots=True)
class HeaderRules:
    """Header edits: `set` replaces, `add` appends, `remove` deletes (applied remove, set, add)."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    @classmethod
    def parse(cls, data: object, where: str) -> HeaderRules:
        m = mapping(data, where, ("set", "add", "remove"))

        def pairs(key: str) -> tuple[tuple[str, str], ...]:
            raw = m.get(key, {})
            if not isinstance(raw, Mapping):
                raise RuleError(f"{where}.{key}", f"must be a mapping, not {type_name(raw)}", raw)
            return tuple((header_name(k, f"{where}.{key}"),
                          _header_value(v, f"{where}.{key}.{k}")) for k, v in raw.items())

        remove = tuple(header_name(h, f"{where}.remove[{i}]")
                       for i, h in enumerate(sequence(m.get("remove", []), f"{where}.remove")))
        set_, add = pairs("set"), pairs("add")
        return cls(set_, add, remove) if set_ or add or remove else NO_HEADER_RULES

    def __bool__(self) -> bool:
        return bool(self.set or self.add or self.remove)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.set:
            out["set"] = dict(self.set)
        if self.add:
            out["add"] = dict(self.add)
        if self.remove:
            out["remove"] = list(self.remove)
        return out


# The rules of a route that edits no header (most): one object shared by every such route.
NO_HEADER_RULES = HeaderRules()


@dataclass(frozen=True, slots=True)
class Rewrite:
    """What a route changes before forwarding and on the way back.

    `path_prefix` replaces the matched `match.path_prefix` (`/` strips it); `path_regex` with
    `replacement` rewrites the first match (RE2 pattern; `\\1`-`\\99`, `\\g<n>` or `\\g<name>`); `host` sets
    the upstream Host header (absent: the client's Host is kept).
    """

    path_prefix: str | None = None
    path_regex: str | None = None
    replacement: str | None = None
    host: str | None = None
    request_headers: HeaderRules = NO_HEADER_RULES
    response_headers: HeaderRules = NO_HEADER_RULES

    @classmethod
    def parse(cls, data: object, where: str, refused: Refusals = None) -> Rewrite:
        m = mapping(data, where, ("path_prefix", "path_regex", "replacement", "host",
                                   "request_headers", "response_headers"))
        if not m:
            return NO_REWRITE
        prefix = plain_path(m["path_prefix"], f"{where}.path_prefix") if "path_prefix" in m else None
        count = len(refused) if refused is not None else 0
        regex = _regex(m["path_regex"], f"{where}.path_regex", refused) if "path_regex" in m else None
        runs = refused is None or len(refused) == count  # the stored pattern itself is not refused
        replacement = (string(m["replacement"], f"{where}.replacement", empty=True)
                       if "replacement" in m else None)
        if prefix is not None and regex is not None:
            raise RuleError(f"{where}.path_regex", "only one of path_prefix or path_regex may be given")
        if (regex is None) != (replacement is None):
            raise RuleError(f"{where}.replacement" if regex is not None else f"{where}.path_regex",
                            "path_regex and replacement go together")
        if replacement is not None and any(not 0x20 < ord(c) < 0x7f for c in replacement):
            # It becomes part of the request line sent upstream: CR/LF there would split the request.
            _refuse(RuleError(f"{where}.replacement", "may hold only visible ASCII characters (no "
                              "spaces or control characters)", replacement), refused)
        elif regex is not None and replacement is not None and runs:
            try:
                Substitution(regex, replacement)
            except RegexError as exc:
                _refuse(RuleError(f"{where}.replacement", f"does not fit path_regex: {exc}",
                                  replacement), refused)
        host = None
        if "host" in m:
            host = string(m["host"], f"{where}.host").lower()
            hostname = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
            if not HOST_RE.match(hostname) or hostname.startswith("*"):
                raise RuleError(f"{where}.host", "must be a host name, optionally with :port", host)
        return cls(prefix, regex, replacement, host,
                   HeaderRules.parse(m.get("request_headers", {}), f"{where}.request_headers"),
                   HeaderRules.parse(m.get("response_headers", {}), f"{where}.response_headers"))

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.path_prefix, self.path_regex, self.host)) or \
            bool(self.request_headers) or bool(self.response_headers)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("path_prefix", "path_regex", "replacement", "host"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.request_headers:
            out["request_headers"] = self.request_headers.to_dict()
        if self.response_headers:
            out["response_headers"] = self.response_headers.to_dict()
        return out


# The rewrite of a route that rewrites nothing (most): one object shared by every such route.
NO_REWRITE = Rewrite()


@dataclass(frozen=True, slots=True)
class Route:
    """A stored rule: a match, what to change, and the service that answers.

    With a `migration`, `service` is the `from` side and the migration says when `to` answers.
    `max_body` (bytes) caps the request body on this route; None: the listener's `limits.max_body`.
    `retries`, `timeouts` and `buffering` replace the service's whole block (None: the service's);
    with a migration they apply to both sides. `websocket`: the route accepts WebSocket upgrades.
    """

    name: str
    match: Match
    service: str
    priority: int = 0
    rewrite: Rewrite = NO_REWRITE
    migration: Migration | None = None
    max_body: int | None = None
    # what a stored parse kept instead of refusing (never printed: the patterns themselves are)
    refused_regex: tuple[RefusedRegex, ...] = ()
    retries: RetryPolicy | None = None
    timeouts: Timeouts | None = None
    rate_limit: RateLimit | None = None
    websocket: bool = False
    buffering: Buffering | None = None
    # who may call the route, by the calling gateway's identity (docs/mtls.md); None: no policy
    authorization: Authorization | None = None
    # its line in the stored text, once written or read (`routes.document_text`); not a field of
    # the route: not compared, not printed
    _line: str | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def parse(cls, data: object, where: str, *, stored: bool = False) -> Route:
        """`stored`: keep a regex RE2 refuses and list it in `refused_regex` (module docstring)."""
        m = mapping(data, where, ("name", "match", "service", "priority", "rewrite", "migration",
                                   "max_body", *_ROUTE_POLICIES, "websocket"))
        if "name" not in m:
            raise RuleError(f"{where}.name", "is required")
        name = rule_name(m["name"], f"{where}.name")
        where = f"routes[{name}]"
        if "service" not in m:
            raise RuleError(f"{where}.service", "is required")
        # one string for the service's name in all its routes (10,000 routes of one service: 0.5 MB)
        service = sys.intern(rule_name(m["service"], f"{where}.service"))
        priority = m.get("priority", 0)
        if not isinstance(priority, int) or isinstance(priority, bool) or \
                not -1_000_000 <= priority <= 1_000_000:
            raise RuleError(f"{where}.priority", "must be an integer between -1000000 and 1000000",
                            priority)
        refused: Refusals = [] if stored else None
        match = Match.parse(m.get("match", {}), f"{where}.match", refused)
        rewrite = Rewrite.parse(m.get("rewrite", {}), f"{where}.rewrite", refused)
        if rewrite.path_prefix is not None and match.path_prefix is None:
            raise RuleError(f"{where}.rewrite.path_prefix", "needs match.path_prefix to replace",
                            rewrite.path_prefix)
        migration = Migration.parse(m["migration"], f"{where}.migration") if "migration" in m else None
        if migration is not None and migration.to == service:
            raise RuleError(f"{where}.migration.to", "must differ from the route's service (the "
                            "service the route moves away from)", migration.to)
        max_body = m.get("max_body")
        if max_body is not None and (not isinstance(max_body, int) or isinstance(max_body, bool)
                                     or max_body < 0):
            raise RuleError(f"{where}.max_body", "must be a whole number of bytes, 0 or more", max_body)
        policies = {key: parse(m[key], f"{where}.{key}")
                    for key, parse in _ROUTE_POLICIES.items() if m.get(key) is not None}
        kept = tuple(RefusedRegex(name, e.field, e.message, str(e.value)) for e in refused or ())
        return cls(name, match, service, priority, rewrite, migration, max_body, kept,
                   websocket=boolean(m.get("websocket", False), f"{where}.websocket"), **policies)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "match": self.match.to_dict(),
                               "service": self.service}
        if self.priority:
            out["priority"] = self.priority
        if self.rewrite:
            out["rewrite"] = self.rewrite.to_dict()
        if self.migration is not None:
            out["migration"] = self.migration.to_dict()
        if self.max_body is not None:
            out["max_body"] = self.max_body
        for key in _ROUTE_POLICIES:
            policy = getattr(self, key)
            if policy is not None:
                out[key] = policy.to_dict()
        if self.websocket:
            out["websocket"] = True
        return out


# The policy blocks a route may declare, and their parsers.
_ROUTE_POLICIES: dict[str, Callable[[object, str], Any]] = {
    "retries": RetryPolicy.parse, "timeouts": Timeouts.parse, "rate_limit": RateLimit.parse,
    "buffering": Buffering.parse, "authorization": Authorization.parse}


# ---------------------------------------------------------------------------------------------
# The whole document


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Document:
    """All services and routes of one config version, in a stable order (by name).

    `revocations` (by time) and `mesh` are the fleet's certificate revocations and mesh switches
    (`routes.revocations`); edits of services and routes keep them (`replace_items`).
    """

    services: tuple[Service, ...] = ()
    routes: tuple[Route, ...] = ()
    revocations: tuple[Revocation, ...] = ()
    mesh: Mesh | None = None
    # what `build` checked, kept for the next build from this document (`RouteIndex`)
    _index: RouteIndex | None = field(default=None, repr=False, compare=False, hash=False)
    # how this document differs from the one it was edited from (`replace_items`), for the diff,
    # the compiler and the codec to do what changed and no more; None: not known
    delta: Delta | None = field(default=None, repr=False, compare=False, hash=False)

    @classmethod
    def parse(cls, data: object, *, stored: bool = False, memo: ParseMemo | None = None) -> Document:
        """`stored`: a document read back from the store (lenient about RE2 refusals only).
        `memo`: reuse the services and routes of the last document parsed with it whose data is
        unchanged (`ParseMemo`), and check only the routes that changed."""
        if data is None:
            data = {}
        m = mapping(data, "document", ("services", "routes", "revocations", "mesh"))
        service_data = sequence(m.get("services") or [], "services")
        route_data = sequence(m.get("routes") or [], "routes")
        base = None
        if memo is None:
            services = [Service.parse(s, f"services[{i}]") for i, s in enumerate(service_data)]
            routes = [Route.parse(r, f"routes[{i}]", stored=stored) for i, r in enumerate(route_data)]
        else:
            services, routes = memo.parse(service_data, route_data, stored)
            base = memo.document
        document = cls.build(services, routes, stored=stored,
                             revocations=parse_revocations(m.get("revocations")),
                             mesh=Mesh.parse(m.get("mesh")), base=base)
        if memo is not None:
            memo.document = document
        return document

    def replace_items(self, *, services: Iterable[Service] = (), routes: Iterable[Route] = (),
                      delete_services: Iterable[str] = (), delete_routes: Iterable[str] = (),
                      head: tuple[Mesh | None, Iterable[Revocation]] | None = None,
                      stored: bool = False) -> Document:
        """This document with `services` and `routes` added or put in place of the items of the
        same names and the named ones removed (a name that is absent is no error here), checked as
        `build` checks with this document as its base, and carrying its `Delta`. `head`: a new
        mesh and revocations (else this document's); `stored`: as in `build` (the next version read
        back from the store).

        A change to routes alone costs what changed: the sorted tuple is this one's with the items
        replaced in place (found by bisection), and only the changed routes are checked, against
        this document's `RouteIndex`. A change to services is built whole.
        """
        service_list, route_list = list(services), list(routes)
        put_services = {s.name: s for s in service_list}
        put_routes = {r.name: r for r in route_list}
        gone_services = set(delete_services) - put_services.keys()
        gone_routes = set(delete_routes) - put_routes.keys()
        delta = Delta(self, frozenset(put_routes.keys() | gone_routes),
                      frozenset(put_services.keys() | gone_services))
        mesh, revocations = head if head is not None else (self.mesh, self.revocations)
        index = self._index
        if delta.services or index is None or (index.refused and not stored) \
                or len(put_routes) != len(route_list):
            # (a name put twice: `build` refuses it, naming the field)
            kept = [s for s in self.services if s.name not in delta.services]
            document = Document.build(kept + service_list,
                                      [r for r in self.routes if r.name not in delta.routes] + route_list,
                                      revocations=revocations, mesh=mesh, base=self, stored=stored)
            return _with_delta(document, delta)
        items = list(self.routes)
        edit_by_name(self.routes, delta.routes, items, lambda name, _old: put_routes.get(name))
        checked = index.changed(list(put_routes.values()), gone_routes, stored=stored)
        return Document(self.services, tuple(items), canonical(revocations), _kept(mesh), checked, delta)

    @classmethod
    def build(cls, services: Iterable[Service], routes: Iterable[Route], *,
              stored: bool = False, revocations: Iterable[Revocation] = (),
              mesh: Mesh | None = None, base: Document | None = None) -> Document:
        """Check cross-references and return the document in canonical order.

        A route with a `refused_regex` is refused (its 422 names the field and the fix) unless the
        document is the stored one being read: an edit never writes such a route again.

        `base`: a document built before whose routes this one mostly shares (the same objects: an
        edit, or the next version read with the same memo). When it names the same services, only
        the routes that are not the base's objects are checked, against the base's `RouteIndex`
        less the routes that left: a one-route change to a 10,000-route document checks one route.
        """
        by_name: dict[str, Service] = {}
        for s in services:
            if s.name in by_name:
                raise RuleError(f"services[{s.name}].name", "is used by another service", s.name)
            by_name[s.name] = s
        route_list = list(routes)
        index = None
        if base is not None and base._index is not None:
            index = base._index.derive(route_list, by_name, stored)
        if index is None:
            index = RouteIndex.check(route_list, by_name, stored)
        return cls(tuple(sorted(by_name.values(), key=_NAME)), tuple(sorted(route_list, key=_NAME)),
                   canonical(revocations), _kept(mesh), index)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"services": [s.to_dict() for s in self.services],
                               "routes": [r.to_dict() for r in self.routes]}
        if self.revocations:
            out["revocations"] = [r.to_dict() for r in self.revocations]
        if self.mesh is not None:
            out["mesh"] = self.mesh.to_dict()
        return out

    def service(self, name: str) -> Service | None:
        if self._index is not None:
            return self._index.services.get(name)
        return next((s for s in self.services if s.name == name), None)

    def refused_regexes(self) -> list[RefusedRegex]:
        """What a stored parse kept that this Peel will not run, route by route (usually none)."""
        return [refusal for r in self.routes for refusal in r.refused_regex]

    def check_writable(self) -> None:
        """Refuse (RuleError, 422) to write a document that still holds a refused regex."""
        if self._index is not None and not self._index.refused:
            return  # counted by the checks (a pass over every route otherwise)
        for refusal in self.refused_regexes():
            raise refusal.error()

    def route(self, name: str) -> Route | None:
        if self._index is not None:
            return self._index.routes.get(name)
        return next((r for r in self.routes if r.name == name), None)


_NAME = attrgetter("name")


class Delta:
    """What an edit changed: the names of the routes and of the services added, replaced or
    removed (a name whose item was put back equal is listed too) relative to `base`, the document
    it was made from. Every item of the new document whose name is not listed is `base`'s own
    object; that is what lets the diff, the compile and the encode of a change skip the rest.

    The base is held weakly: a chain of edits must not keep every earlier version alive. Once it is
    gone, `base` is None and nothing can use the delta (nothing holds the base to compare with).
    """

    __slots__ = ("_base", "routes", "services")

    def __init__(self, base: Document, routes: frozenset[str] = frozenset(),
                 services: frozenset[str] = frozenset()) -> None:
        self._base = weakref.ref(base)
        self.routes = routes
        self.services = services

    @property
    def base(self) -> Document | None:
        return self._base()

    def __repr__(self) -> str:
        return f"Delta(routes={sorted(self.routes)}, services={sorted(self.services)})"


KEEP: Any = object()  # what `edit_by_name`'s `value` returns to leave an item as it is


def edit_by_name(held: Sequence[Any], names: Iterable[str], out: list[Any],
                 value: Callable[[str, Any], Any]) -> None:
    """Edit `out`, a list aligned with `held` (items sorted by name), at the places of `names`,
    found by bisection (a one-route change to 10,000 routes: a few comparisons, not a pass).

    `value(name, old)`, `old` the item of `held` of that name or None, gives what goes in its place
    in `out`: `KEEP` leaves it; None removes it (or adds nothing); anything else replaces it or is
    inserted in order. The names are taken from the last to the first, so that an insertion or a
    removal leaves the places of those before it as they were.
    """
    for name in sorted(names, reverse=True):
        at = bisect_left(held, name, key=_NAME)
        old = held[at] if at < len(held) and held[at].name == name else None
        item = value(name, old)
        if item is KEEP:
            continue
        if old is not None:
            if item is None:
                del out[at]
            else:
                out[at] = item
        elif item is not None:
            out.insert(at, item)


def _kept(mesh: Mesh | None) -> Mesh | None:
    """What a document keeps of a mesh: nothing when it switches nothing."""
    return mesh if mesh is not None and mesh.inbound_mtls is not None else None


def _with_delta(document: Document, delta: Delta) -> Document:
    return Document(document.services, document.routes, document.revocations, document.mesh,
                    document._index, delta)


def _match_key(route: Route) -> tuple[object, ...]:
    """(priority, *the match's key): one tuple a route, of three items for most (a 2-tuple around
    a 9-tuple kept on every `Match` until 2026-12-06: 1 MiB more for 10,000 routes)."""
    return (route.priority, *route.match.key())


class RouteIndex:
    """What `Document.build` checked of a document: its services and routes by name, and which
    route holds each (priority, match) pair. Built whole by `check`, or by `derive` from the index
    of a document that shares most routes, checking only the routes that differ."""

    __slots__ = ("by_match", "refused", "routes", "services")

    # `derive` checks whole when more than this share of the routes changed (a whole new document)
    WHOLE = 0.25

    def __init__(self, services: dict[str, Service], routes: dict[str, Route],
                 by_match: dict[tuple[object, ...], str], refused: int) -> None:
        self.services = services
        self.routes = routes
        self.by_match = by_match
        self.refused = refused  # routes holding a regex RE2 refuses (a stored document's)

    @classmethod
    def check(cls, routes: list[Route], services: dict[str, Service], stored: bool) -> RouteIndex:
        """Check every route, in order; the first wrong one raises `RuleError`."""
        by_name: dict[str, Route] = {}
        by_match: dict[tuple[object, ...], str] = {}
        refused = 0
        for r in routes:
            _check_route(r, by_name, services, by_match, stored)
            refused += bool(r.refused_regex)
            by_name[r.name] = r
        return cls(services, by_name, by_match, refused)

    def derive(self, routes: list[Route], services: dict[str, Service],
               stored: bool) -> RouteIndex | None:
        """The index of `routes` checking only those that are not this index's objects, or None
        when that cannot be done (other service names, a refused regex carried into an edit, a
        duplicate name, too many changes): the caller then checks whole."""
        if services.keys() != self.services.keys() or (self.refused and not stored):
            return None
        known = self.routes
        fresh = [r for r in routes if known.get(r.name) is not r]
        if len(fresh) > self.WHOLE * len(routes) + 16:
            return None
        names = {r.name for r in routes}
        if len(names) != len(routes):
            return None  # a duplicate name: the whole check names it
        return self.changed(fresh, known.keys() - names, stored=stored, services=services)

    def changed(self, put: list[Route], removed: Iterable[str], *, stored: bool,
                services: dict[str, Service] | None = None) -> RouteIndex:
        """The index after the routes of `put` replaced or joined this one's and the routes named
        in `removed` left, checking only those of `put` against `services` (by default this
        index's)."""
        services = self.services if services is None else services
        # .copy(), not dict(): dict() copies a dict that ever lost a key item by item (0.3-0.6 ms
        # for 10,000 routes), .copy() as one block while at most a third of its entries are deleted
        by_name = self.routes.copy()
        by_match = self.by_match.copy()
        refused = self.refused
        for name in removed:
            old = by_name.pop(name, None)
            if old is not None:
                refused -= self._drop(old, by_match)
        for r in put:
            old = by_name.pop(r.name, None)
            if old is not None:
                refused -= self._drop(old, by_match)
        for r in put:
            _check_route(r, by_name, services, by_match, stored)
            refused += bool(r.refused_regex)
            by_name[r.name] = r
        return RouteIndex(services, by_name, by_match, refused)

    @staticmethod
    def _drop(route: Route, by_match: dict[tuple[object, ...], str]) -> bool:
        key = _match_key(route)
        if by_match.get(key) == route.name:
            del by_match[key]
        return bool(route.refused_regex)


def _check_route(r: Route, by_name: dict[str, Route], services: dict[str, Service],
                 by_match: dict[tuple[object, ...], str], stored: bool) -> None:
    """Check one route against the others already in `by_name` and `by_match`, and add its match."""
    if r.refused_regex and not stored:
        raise r.refused_regex[0].error()
    if r.name in by_name:
        raise RuleError(f"routes[{r.name}].name", "is used by another route", r.name)
    if r.service not in services:
        raise RuleError(f"routes[{r.name}].service", "names no service", r.service)
    if r.migration is not None and r.migration.to not in services:
        raise RuleError(f"routes[{r.name}].migration.to", "names no service", r.migration.to)
    key = _match_key(r)
    other = by_match.get(key)
    if other is not None:
        raise RuleError(f"routes[{r.name}].match", f"has the same match and priority as "
                        f"route {other!r}; give one of them a priority", r.match.to_dict())
    by_match[key] = r.name


class ParseMemo:
    """The services and routes of the last document parsed with this memo, each with the data it
    was parsed from. Parsing again, an item whose data is equal (a dict comparison, in C) is the same
    object as before instead of being parsed again: reading each new config version of a
    10,000-route table costs the changed routes, not all of them, and the unchanged ones stay the
    same objects for the compiler and the diff to skip.

    Safe to share between threads: each parse reads the memo's last state and replaces it whole.
    It keeps the last document's data (about 0.5 KiB per route), and the last document, the base
    of the next one's checks (`Document.build`).
    """

    __slots__ = ("_routes", "_services", "document")

    def __init__(self) -> None:
        self._services: dict[object, tuple[object, Service]] = {}
        self._routes: dict[tuple[object, bool], tuple[object, Route]] = {}
        self.document: Document | None = None

    def parse(self, service_data: list[Any], route_data: list[Any], stored: bool
              ) -> tuple[list[Service], list[Route]]:
        old_services, old_routes = self._services, self._routes
        services_seen: dict[object, tuple[object, Service]] = {}
        routes_seen: dict[tuple[object, bool], tuple[object, Route]] = {}
        services: list[Service] = []
        for i, raw in enumerate(service_data):
            name = raw.get("name") if isinstance(raw, dict) else None
            known = old_services.get(name) if isinstance(name, str) else None
            service = known[1] if known is not None and known[0] == raw \
                else Service.parse(raw, f"services[{i}]")
            services.append(service)
            services_seen[name] = (raw, service)
        routes: list[Route] = []
        for i, raw in enumerate(route_data):
            name = raw.get("name") if isinstance(raw, dict) else None
            known_route = old_routes.get((name, stored)) if isinstance(name, str) else None
            route = known_route[1] if known_route is not None and known_route[0] == raw \
                else Route.parse(raw, f"routes[{i}]", stored=stored)
            routes.append(route)
            routes_seen[(name, stored)] = (raw, route)
        self._services, self._routes = services_seen, routes_seen
        return services, routes
