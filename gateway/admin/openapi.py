"""The admin API's OpenAPI 3.1 document, written out as data.

It is built from plain dicts rather than introspected, so it says exactly what the handlers do,
including the shapes of the declarative document; a test checks that every registered route is
described here.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def _obj(properties: dict[str, Schema], required: tuple[str, ...] = (), **extra: Any) -> Schema:
    out: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        out["required"] = list(required)
    out.update(extra)
    return out


NAME: Schema = {"type": "string", "pattern": r"^[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?$"}
PATH: Schema = {"type": "string", "pattern": "^/"}
FIELD_MATCH = _obj({"name": {"type": "string"}, "value": {"type": "string"},
                    "regex": {"type": "string", "format": "regex"}, "present": {"type": "boolean"}},
                   ("name",), description="Exactly one of value, regex (searched) or present.")
# Durations: seconds, or a number with a unit; printed canonically ("250ms", "1.5s", "2m").
_DURATION_TEXT = {"type": "string", "pattern": r"^\d+(\.\d+)?(e[+-]?\d+)?(ms|s|m|h)$"}
DURATION: Schema = {"oneOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": 86400}, _DURATION_TEXT],
                    "description": "seconds, or 250ms, 1.5s, 2m, 1h; more than 0, at most 24h"}
DURATION_OR_ZERO: Schema = {"oneOf": [{"type": "number", "minimum": 0, "maximum": 86400}, _DURATION_TEXT],
                            "description": "seconds, or 250ms, 1.5s, 2m, 1h; 0 or more, at most 24h"}
STATUS: Schema = {"type": "integer", "minimum": 100, "maximum": 599}
# An absolute path on the gateways' machines (only its shape is checked when a document is applied).
TLS_FILE: Schema = {"type": "string", "pattern": "^/", "maxLength": 4096}


def _count(default: int, low: int = 1, high: int = 1000) -> Schema:
    return {"type": "integer", "minimum": low, "maximum": high, "default": default}


def _duration(default: str, zero: bool = False) -> Schema:
    return {**(DURATION_OR_ZERO if zero else DURATION), "default": default}


HEADER_RULES = _obj({"set": {"type": "object", "additionalProperties": {"type": "string"}},
                     "add": {"type": "object", "additionalProperties": {"type": "string"}},
                     "remove": _array({"type": "string"})})

# The resilience policies (routes/policies.py, docs/resilience.md).
POLICIES: dict[str, Schema] = {
    "Endpoint": {"oneOf": [{"type": "string", "format": "uri"},
                           _obj({"url": {"type": "string", "format": "uri"},
                                 "weight": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 1}},
                                ("url",))],
                 "description": "http(s)://host:port, or {url, weight} (printed as the URL when "
                                "weight is 1)"},
    "HashOn": _obj({"header": {"type": "string"}, "cookie": {"type": "string"}, "client": {"const": True}},
                   minProperties=1, maxProperties=1,
                   description="The consistent-hashing key: exactly one of header, cookie or client."),
    "Balancer": _obj({"policy": {"enum": ["ewma", "round_robin", "hash"], "default": "ewma"},
                      "hash_on": _ref("HashOn"), "slow_start": _duration("0s", zero=True),
                      "decay": _duration("10s")},
                     description="hash_on is required by policy hash and refused for the others."),
    "HealthCheck": _obj({"path": {**PATH, "default": "/healthz"}, "interval": _duration("5s"),
                         "timeout": _duration("1s"), "healthy_threshold": _count(2),
                         "unhealthy_threshold": _count(3),
                         "statuses": {**_array(STATUS), "minItems": 1, "default": [200]},
                         "host": {"type": "string", "description": "Host header; default: the endpoint's"}},
                        description="Active HTTP checks of every endpoint; absent: none."),
    "OutlierDetection": _obj({"consecutive_5xx": _count(5), "consecutive_failures": _count(5),
                              "base_ejection": _duration("30s"), "max_ejection": _duration("5m"),
                              "max_ejected_percent": _count(50, 0, 100)},
                             description="Passive ejection; `outlier: false` turns it off."),
    "CircuitBreaker": _obj({"max_requests": _count(1024, 1, 1_000_000),
                            "max_pending": _count(1024, 1, 1_000_000)}),
    "RetryPolicy": _obj({"attempts": _count(2, 1, 10),
                         "retry_on": {**_array({"enum": ["connect-failure", "reset", "timeout",
                                                         "502", "503", "504"]}),
                                      "default": ["connect-failure", "reset"]},
                         "statuses": _array(STATUS),
                         "idempotency_header": {"type": "string", "default": "Idempotency-Key",
                                                "description": "empty: only idempotent methods"},
                         "backoff_base": _duration("25ms", zero=True),
                         "backoff_max": _duration("250ms", zero=True),
                         "max_body": _count(65536, 0, 16 * 1024 * 1024),
                         "budget_percent": {"type": "number", "minimum": 0, "maximum": 100, "default": 20},
                         "budget_min": {"type": "number", "minimum": 0, "default": 3}}),
    "Timeouts": _obj({"connect": DURATION, "response": DURATION, "idle": DURATION, "total": DURATION},
                     description="Absent: the [proxy] settings (total: none); total >= each other."),
    "RateLimit": _obj({"requests": {"type": "integer", "minimum": 1}, "per": _duration("1s"),
                       "burst": {"type": "integer", "minimum": 1, "description": "default: requests"},
                       "header": {"type": "string", "description": "key; default: the client address"}},
                      ("requests",), description="A token bucket per client address or header value."),
    "Authorization": _obj({"allow_from": _array({"type": "string"}), "deny_from": _array({"type": "string"}),
                           "mode": {"type": "string", "enum": ["enforce", "dry_run"], "default": "enforce"}},
                          description="Who may call the route, by the caller's identity: SPIFFE IDs or "
                                      "service names; deny_from wins (docs/mtls.md)."),
    "Buffering": _obj({"memory": _count(65536, 0, 16 * 1024 * 1024),
                       "max_body": _count(64 * 1024 * 1024, 1, 16 * 1024 ** 3),
                       "min_rate": _count(1024, 0, 1_000_000_000), "timeout": _duration("5m"),
                       "response": _count(1024 * 1024, 65536, 256 * 1024 * 1024)},
                      description="Request and response buffering (on by default); `buffering: "
                                  "false` streams both ways."),
    "ServiceTls": _obj({"ca": {**TLS_FILE, "description": "PEM bundle the endpoints' certificates "
                                                          "must chain to; default: the system's CAs"},
                        "client_cert": {**TLS_FILE, "description": "certificate Peel presents (PEM)"},
                        "client_key": {**TLS_FILE, "description": "its key (PEM, unencrypted); "
                                                                  "default: in client_cert's file"},
                        "server_name": {"type": "string", "description": "SNI sent and name verified; "
                                        "default: the endpoint's host"},
                        "min_version": {"type": "string", "enum": ["1.2", "1.3"], "default": "1.2"}},
                       description="TLS to the service's https endpoints; verification is always on "
                                   "(docs/upstream-tls.md). Files are read by each gateway."),
}

SCHEMAS: dict[str, Schema] = {
    **POLICIES,
    "Service": _obj({"name": NAME, "endpoints": {**_array(_ref("Endpoint")), "minItems": 1},
                     "balancer": _ref("Balancer"), "health_check": _ref("HealthCheck"),
                     "outlier": {"oneOf": [_ref("OutlierDetection"), {"type": "boolean"}]},
                     "circuit_breaker": _ref("CircuitBreaker"), "retries": _ref("RetryPolicy"),
                     "timeouts": _ref("Timeouts"),
                     "buffering": {"oneOf": [_ref("Buffering"), {"type": "boolean"}]},
                     "tls": _ref("ServiceTls"),
                     "identity": {"type": "string", "description": "the SPIFFE ID its https endpoints "
                                  "(peer gateways' inbound listeners) must present (docs/mtls.md)"}},
                    ("name", "endpoints"),
                    description="A named upstream: a pool of endpoints and its resilience policies."),
    "FieldMatch": FIELD_MATCH,
    "Match": _obj({"hosts": _array({"type": "string"}), "path": PATH, "path_prefix": PATH,
                   "path_template": PATH, "path_regex": {"type": "string", "format": "regex"},
                   "methods": _array({"type": "string"}), "headers": _array(_ref("FieldMatch")),
                   "query": _array(_ref("FieldMatch")), "cookies": _array(_ref("FieldMatch"))},
                  description="The predicates of a route; at most one path kind. Empty matches all."),
    "HeaderRules": HEADER_RULES,
    "Rewrite": _obj({"path_prefix": PATH, "path_regex": {"type": "string", "format": "regex"},
                     "replacement": {"type": "string"}, "host": {"type": "string"},
                     "request_headers": _ref("HeaderRules"), "response_headers": _ref("HeaderRules")}),
    "Route": _obj({"name": NAME, "match": _ref("Match"), "service": NAME,
                   "priority": {"type": "integer", "minimum": -1000000, "maximum": 1000000, "default": 0},
                   "max_body": {"type": "integer", "minimum": 0,
                                "description": "request body cap in bytes (413); absent: limits.max_body"},
                   "rewrite": _ref("Rewrite"), "migration": _ref("Migration"),
                   "retries": {**_ref("RetryPolicy"), "description": "replaces the service's retries"},
                   "timeouts": {**_ref("Timeouts"), "description": "replaces the service's timeouts"},
                   "rate_limit": _ref("RateLimit"), "authorization": _ref("Authorization"),
                   "websocket": {"type": "boolean", "default": False},
                   "buffering": {"oneOf": [_ref("Buffering"), {"type": "boolean"}],
                                 "description": "replaces the service's buffering"}}, ("name", "service"),
                  description="A stored rule: a match, what to change, and the service that answers."),
    "MtlsSource": _obj({"source": {"type": "string", "description": "the identity, else the address"},
                        "requests": {"type": "integer"}, "last_seen": {"type": "number"}},
                       ("source", "requests", "last_seen")),
    "MtlsReadiness": _obj({"window": {"type": "number"}, "plaintext": _array(_ref("MtlsSource")),
                           "mtls": _array(_ref("MtlsSource")), "ready": {"type": "boolean"}},
                          ("window", "plaintext", "mtls", "ready"),
                          description="ready: no source spoke plaintext in the window"),
    "GraphNode": _obj({"id": {"type": "string"}, "kinds": _array({"enum": ["caller", "service"]})},
                      ("id", "kinds")),
    "GraphEdge": _obj({"source": {"type": "string", "description": "the caller's node: a service "
                                  "(of a Peel identity), `external`, an address or `other`"},
                       "identity": {"type": ["string", "null"], "description": "the caller's SPIFFE ID"},
                       "destination": {"type": "string", "description": "the service that answered"},
                       "requests": {"type": "integer"}, "errors": {"type": "integer"},
                       "rate": {"type": "number", "description": "requests per second"},
                       "error_rate": {"type": "number", "description": "errors / requests"},
                       "p99_ms": {"type": ["number", "null"]},
                       "expected": {"type": ["boolean", "null"], "description": "an allow_from "
                                    "declares the caller; null for callers no policy can name"},
                       "observed_by": _array({"enum": ["outbound", "inbound", "public"]})},
                      ("source", "destination", "requests", "errors", "rate", "error_rate", "p99_ms",
                       "expected", "observed_by")),
    "Graph": _obj({"window": {"type": "number"}, "config_version": {"type": "integer"},
                   "nodes": _array(_ref("GraphNode")), "edges": _array(_ref("GraphEdge")),
                   "unexpected": {"type": "integer"}},
                  ("window", "config_version", "nodes", "edges", "unexpected"),
                  description="The dependency graph over every gateway (docs/east-west.md)"),
    "KeySource": _obj({"header": {"type": "string"}, "cookie": {"type": "string"}},
                      description="Where a value comes from: a header or a cookie (one of them)."),
    "Beta": _obj({"header": {"type": "string"}, "cookie": {"type": "string"},
                  "allow": _array({"type": "string"}), "deny": _array({"type": "string"})},
                 description="Beta users by a trusted header or cookie: allow gets `to` from canary "
                             "on, deny never gets `to` while a `from` exists."),
    "Fallback": _obj({"statuses": _array({"type": "integer", "minimum": 200, "maximum": 599}),
                      "on_error": {"type": "boolean", "default": True},
                      "max_body": {"type": "integer", "minimum": 0, "default": 65536},
                      "unsafe_methods": {"type": "boolean", "default": False}}),
    "Migration": _obj({"to": NAME, "stage": {"enum": ["legacy", "canary", "migrated", "retired"],
                                             "default": "legacy"},
                       "percent": {"type": "number", "minimum": 0, "maximum": 100, "default": 0},
                       "cohort": _ref("KeySource"), "salt": {"type": "string"}, "beta": _ref("Beta"),
                       "fallback": _ref("Fallback"), "guard": _ref("GuardPolicy")}, ("to",),
                      description="The strangling of the route from its `service` to `to`."),
    "MigrationStatus": {"type": "object", "properties": {
        "route": NAME, "from": NAME, "to": NAME, "stage": {"type": "string"},
        "percent": {"type": "number"}, "migration": _ref("Migration"),
        "since": {"type": ["object", "null"], "description": "the last transition"},
        "counts": {"type": "object", "description": "requests since the last transition, summed "
                   "over every gateway process: to, from, fallback, retired_misses",
                   "additionalProperties": {"type": "integer"}},
        "guard": {"type": ["object", "null"], "description": "where the guard stands and why: policy, "
                  "frozen, the window judged now, action, rule, reason, next_stage, next_percent, "
                  "evidence (the window's numbers); null without a guard"}}},
    "MigrationList": {"type": "object", "properties": {"version": {"type": "integer"},
                                                       "migrations": _array(_ref("MigrationStatus"))}},
    "ShadowReport": {"type": "object", "properties": {
        "version": {"type": "integer"},
        "shadow": {"type": "object", "description": "compared pairs, mismatch rate and interval, "
                   "the noise baseline, dropped/skipped/failed copies, the top fields with their "
                   "verdict (regression, inconclusive, below-margin, noise) and redacted examples"}}},
    "MigrationAnswer": {"type": "object", "properties": {"version": {"type": "integer"},
                                                         "migration": _ref("MigrationStatus")}},
    "Transition": {"type": "object", "properties": {
        "route": NAME, "action": {"type": "string"}, "from_stage": {"type": ["string", "null"]},
        "to_stage": {"type": "string"}, "percent": {"type": "number"}, "actor": {"type": "string"},
        "reason": {"type": "string"}, "time": {"type": "string", "format": "date-time"},
        "config_version": {"type": "integer"}}},
    "TransitionHistory": {"type": "object", "properties": {"version": {"type": "integer"},
                                                           "route": NAME,
                                                           "transitions": _array(_ref("Transition"))}},
    "TransitionResult": {"type": "object", "description": "The write result plus the migration now.",
                         "properties": {"version": {"type": "integer"}, "changed": {"type": "boolean"},
                                        "action": {"type": "string"}, "created": _ref("VersionInfo"),
                                        "migration": _ref("MigrationStatus"), "diff": _ref("Diff"),
                                        "summary": {"type": "string"}, "diff_text": {"type": "string"}}},
    "StartRequest": _obj({"to": NAME, "cohort": _ref("KeySource"), "beta": _ref("Beta"),
                          "salt": {"type": "string"}, "reason": {"type": "string"}}, ("to",)),
    "ShiftRequest": _obj({"percent": {"type": "number", "minimum": 0, "maximum": 100},
                          "reason": {"type": "string"}}, ("percent",)),
    "ReasonRequest": _obj({"reason": {"type": "string"}}),
    "GuardPolicy": _obj({
        "steps": _array({"type": ["string", "number"]}), "window": DURATION,
        "min_requests": {"type": "integer", "minimum": 1, "default": 200},
        "min_pairs": {"type": "integer", "minimum": 1, "default": 200},
        "max_error_increase": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.02},
        "max_p99_ratio": {"type": "number", "minimum": 1, "maximum": 100, "default": 1.5},
        "p99_slack_ms": {"type": "number", "minimum": 0, "default": 25},
        "max_mismatch": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.03},
        "confidence": {"type": "number", "minimum": 0.5, "exclusiveMaximum": 1, "default": 0.95},
        "on_failure": {"enum": ["rollback", "hold"], "default": "rollback"},
        "freeze": {"type": "boolean", "default": False}},
        description="A migration's guard (docs/verification.md): steps like [shadow, 1, 5, 25, 50, "
                    "migrated], gates and rollback triggers comparing `to` with `from` per window"),
    "GuardRequest": _obj({"guard": _ref("GuardPolicy"), "freeze": {"type": "boolean"},
                          "off": {"type": "boolean"}, "reason": {"type": "string"}}),
    "Document": _obj({"services": _array(_ref("Service")), "routes": _array(_ref("Route")),
                      "revocations": _array(_ref("Revocation")), "mesh": _ref("Mesh")},
                     description="The declarative document, as `peel export` prints it."),
    "Revocation": _obj({"serial": {"type": "string", "pattern": "^[0-9a-f]{1,40}$"},
                        "identity": {"type": "string", "format": "uri", "pattern": "^spiffe://"},
                        "at": {"type": "string", "format": "date-time"},
                        "reason": {"type": "string", "maxLength": 200}}, ("at",),
                       description="A revoked certificate (serial) or every certificate of an "
                                   "identity issued up to `at` (docs/mtls.md); one of serial or "
                                   "identity."),
    "Mesh": _obj({"inbound_mtls": {"enum": ["permissive", "strict"]}},
                 description="Fleet-wide mesh switches: the mode of every gateway's inbound listener."),
    "RevokeRequest": _obj({"serial": {"type": "string", "description": "hex, colons allowed"},
                           "identity": {"type": "string", "description": "a SPIFFE ID or a service "
                                        "name of [identity] trust_domain"},
                           "reason": {"type": "string"}},
                          description="Exactly one of serial or identity."),
    "RevocationList": {"type": "object", "properties": {"version": {"type": "integer"},
                                                         "revocations": _array(_ref("Revocation"))}},
    "VersionInfo": {"type": "object", "required": ["version", "created_at", "actor", "reason"],
                    "properties": {"version": {"type": "integer"},
                                   "created_at": {"type": "string", "format": "date-time"},
                                   "actor": {"type": "string"}, "reason": {"type": "string"}}},
    "ConfigVersion": {"allOf": [_ref("VersionInfo"),
                                {"type": "object", "required": ["document"],
                                 "properties": {"document": _ref("Document")}}]},
    "History": {"type": "object", "properties": {"version": {"type": "integer"},
                                                 "versions": _array(_ref("VersionInfo"))}},
    "Diff": {"type": "object", "description": "Added, removed and changed services and routes.",
             "additionalProperties": True},
    "DiffAnswer": {"type": "object", "required": ["diff", "summary", "diff_text"],
                   "properties": {"from": {"type": "integer"}, "to": {"type": "integer"},
                                  "diff": _ref("Diff"), "summary": {"type": "string"},
                                  "diff_text": {"type": "string"}}},
    "WriteResult": {"type": "object", "required": ["version", "changed", "diff", "summary"],
                    "description": "`version` is the live config version after the write; `created` "
                                   "is present when the write made a new one.",
                    "properties": {"version": {"type": "integer"}, "changed": {"type": "boolean"},
                                   "created": _ref("VersionInfo"), "diff": _ref("Diff"),
                                   "summary": {"type": "string"}, "diff_text": {"type": "string"},
                                   "dry_run": {"type": "boolean"}, "rolled_back_to": {"type": "integer"},
                                   "service": _ref("Service"), "route": _ref("Route")}},
    "ServiceList": {"type": "object", "properties": {"version": {"type": "integer"},
                                                     "services": _array(_ref("Service")),
                                                     "registered": _array(_ref("Registration"))}},
    "RouteList": {"type": "object", "properties": {"version": {"type": "integer"},
                                                   "routes": _array(_ref("Route"))}},
    "ServiceAnswer": {"type": "object", "properties": {"version": {"type": "integer"},
                                                       "service": _ref("Service"),
                                                       "live": _ref("ServiceLive")}},
    "EndpointLive": {"type": "object", "properties": {
        "weight": {"type": "integer"}, "state": {"enum": ["up", "unhealthy", "ejected"]},
        "healthy": {"type": "boolean", "description": "passes its active checks in every process"},
        "ejected": {"type": "boolean", "description": "ejected by outlier detection in some process"},
        "ejected_for": {"type": ["number", "null"], "description": "seconds left (the longest)"},
        "ejections": {"type": "integer"}, "in_flight": {"type": "integer"},
        "latency_ewma_ms": {"type": ["number", "null"]}, "slow_start": {"type": ["number", "null"]},
        "consecutive_5xx": {"type": "integer"}, "consecutive_failures": {"type": "integer"}}},
    "ServiceLive": {"type": "object", "description": "The serving processes' live view, summed over "
                    "processes; absent when no process serves the service yet.", "properties": {
        "name": {"type": "string"}, "balancer": {"type": "string"},
        "in_flight": {"type": "integer"}, "pending": {"type": "integer"},
        "max_requests": {"type": "integer"}, "max_pending": {"type": "integer"},
        "ejections_total": {"type": "integer"}, "circuit_open_total": {"type": "integer"},
        "panic_total": {"type": "integer"},
        "endpoints": {"type": "object", "additionalProperties": _ref("EndpointLive"),
                      "description": "by endpoint URL"},
        "processes": _array({"type": "object", "properties": {"pid": {"type": "integer"}}})}},
    "RouteAnswer": {"type": "object", "properties": {"version": {"type": "integer"},
                                                     "route": _ref("Route")}},
    "ApplyRequest": _obj({"document": _ref("Document"), "changes": _ref("DocumentChanges"),
                          "dry_run": {"type": "boolean", "default": False},
                          "reason": {"type": "string"}},
                         description="`document` (the whole document) or `changes` (to the config "
                         "version named by If-Match, which is then required)",
                         oneOf=[{"required": ["document"]}, {"required": ["changes"]}]),
    "DocumentChanges": _obj({"services": _array(_ref("Service")), "routes": _array(_ref("Route")),
                             "delete_services": _array({"type": "string"}),
                             "delete_routes": _array({"type": "string"}),
                             "head": _obj({"mesh": {"type": "object"},
                                           "revocations": _array({"type": "object"})},
                                          description="present when the mesh or the revocations "
                                          "change: they are replaced")},
                            description="what `peel apply` sends: the services and routes added or "
                            "replaced (whole), the names of those removed (routes/patch.py)"),
    "RollbackRequest": _obj({"version": {"type": "integer", "minimum": 1}, "reason": {"type": "string"}},
                            ("version",)),
    "MatchRequest": _obj({"method": {"type": "string", "default": "GET"},
                          "url": {"type": "string", "description": "http://host/path?query, or a path "
                                  "with the host in headers.Host"},
                          "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                          "cookies": {"type": "object", "additionalProperties": {"type": "string"},
                                      "description": "sent as one Cookie header"},
                          "from": {"type": "string", "description": "the downstream's IP address: "
                                   "beta and deadline trust, the cohort key without a header or cookie"}},
                         ("url",)),
    "MatchMigration": {"type": "object", "description": "Why a migration picked its side.",
                       "properties": {
                           "stage": {"type": "string"}, "from": {"type": "string"}, "to": {"type": "string"},
                           "side": {"type": "string", "enum": ["to", "from"]},
                           "reason": {"type": "string",
                                      "enum": ["stage", "percent", "beta-allow", "beta-deny"]},
                           "percent": {"type": "number"},
                           "cohort": {"type": "object", "properties": {
                               "source": {"type": "string"}, "key": {"type": ["string", "null"]},
                               "bucket": {"type": ["integer", "null"], "minimum": 0, "maximum": 9999},
                               "share": {"type": "integer", "description": "basis points: bucket < "
                                         "share is in the canary"}}},
                           "beta": {"type": "object", "properties": {
                               "source": {"type": "string"}, "sent": {"type": "boolean"},
                               "trusted": {"type": "boolean"}, "user": {"type": ["string", "null"]},
                               "list": {"type": ["string", "null"], "enum": ["allow", "deny", None]}}}}},
    "MatchResult": {"type": "object",
                    "required": ["version", "route", "service"],
                    "properties": {"version": {"type": "integer"}, "route": {"type": "string"},
                                   "service": {"type": "string", "description": "the service that "
                                               "answers: a migration's chosen side"},
                                   "endpoints": _array({"type": "string", "format": "uri"}),
                                   "priority": {"type": "integer"}, "path": {"type": "string"},
                                   "upstream_path": {"type": "string"},
                                   "upstream_host": {"type": ["string", "null"]},
                                   "side": {"type": ["string", "null"], "enum": ["to", "from", None]},
                                   "migration": {"oneOf": [_ref("MatchMigration"), {"type": "null"}]},
                                   "from": {"type": ["string", "null"]},
                                   "rate_limit": {"type": ["object", "null"]},
                                   "max_body": {"type": ["integer", "null"]},
                                   "deadline_ms": {"type": ["integer", "null"]},
                                   "websocket": {"type": "boolean"},
                                   "refused": {"type": "object", "description": "present when the "
                                               "request would be refused after matching (413, 400 "
                                               "bad-deadline, 504): status, code, detail"}}},
    "Status": {"type": "object", "properties": {"status": {"type": "string"}}},
    "Problem": {"type": "object", "description": "RFC 9457 problem details.",
                "required": ["type", "title", "status", "code", "detail"],
                "properties": {"type": {"type": "string", "format": "uri"}, "title": {"type": "string"},
                               "status": {"type": "integer"}, "code": {"type": "string"},
                               "detail": {"type": "string"},
                               "field": {"type": "string", "description": "the refused field"},
                               "value": {"description": "the refused value"}}},
}

ETAG = {"ETag": {"description": 'The config version this answer reflects, like "12".',
                 "schema": {"type": "string"}}}
IF_MATCH = {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
            "description": 'Refuse the write (412) unless this is the latest config version, like "12".'}
REASON = {"name": "Peel-Reason", "in": "header", "required": False, "schema": {"type": "string"},
          "description": "Why: recorded with the new config version."}
NAME_PARAM = {"name": "name", "in": "path", "required": True, "schema": NAME}


def _problem(description: str) -> Schema:
    return {"description": description,
            "content": {"application/problem+json": {"schema": _ref("Problem")}}}


def _ok(schema: str, description: str = "OK") -> Schema:
    return {"description": description, "headers": ETAG,
            "content": {"application/json": {"schema": _ref(schema)}}}


def _body(schema: str) -> Schema:
    return {"required": True, "content": {"application/json": {"schema": _ref(schema)}}}


COMMON = {"401": _problem("No token, or an unknown or revoked one"),
          "503": _problem("The store is unavailable")}
WRITE_ERRORS = {"400": _problem("Not JSON, or a malformed header"),
                "404": _problem("No such service, route or config version"),
                "409": _problem("Collides with what is stored (duplicate name)"),
                "412": _problem("If-Match named a config version that is no longer the latest"),
                "413": _problem("The body is too large"),
                "422": _problem("A refused rule: `field` and `value` say which")}


def _op(summary: str, responses: dict[str, Schema], *, body: str | None = None,
        params: list[Schema] | None = None, write: bool = False, tag: str = "rules") -> Schema:
    op: Schema = {"summary": summary, "tags": [tag], "responses": {**responses, **COMMON}}
    if write:
        op["responses"] = {**WRITE_ERRORS, **op["responses"]}
    if body is not None:
        op["requestBody"] = _body(body)
    if params:
        op["parameters"] = params
    return op


def _collection(kind: str, schema: str) -> dict[str, Schema]:
    base = f"/api/v1/{kind}s"
    return {
        base: {
            "get": _op(f"List {kind}s of the latest config version", {"200": _ok(f"{schema}List")}),
            "post": _op(f"Create a {kind} (409 when the name exists)",
                        {"201": _ok("WriteResult", "Created; a new config version"),
                         "200": _ok("WriteResult", "No change")},
                        body=schema, params=[IF_MATCH, REASON], write=True),
        },
        base + "/{name}": {
            "parameters": [NAME_PARAM],
            "get": _op(f"One {kind}", {"200": _ok(f"{schema}Answer"), "404": _problem("No such name")}),
            "put": _op(f"Create or replace a {kind}", {"200": _ok("WriteResult")}, body=schema,
                       params=[IF_MATCH, REASON], write=True),
            "delete": _op(f"Delete a {kind}", {"200": _ok("WriteResult")}, params=[IF_MATCH, REASON],
                          write=True),
        },
    }


def _migrations() -> dict[str, Schema]:
    base = "/api/v1/migrations"
    route = {"name": "route", "in": "path", "required": True, "schema": NAME}
    refused = {"404": _problem("No such route, or it has no migration"),
               "409": _problem("The stage does not allow this transition (field: the stage)"),
               "412": _problem("If-Match named a config version that is no longer the latest"),
               "422": _problem("A refused value: unknown service, percent outside 0-100 ...")}

    def transition(summary: str, body: str, required: bool = True) -> Schema:
        op = _op(summary, {"200": _ok("TransitionResult"), **refused}, body=body,
                 params=[IF_MATCH, REASON], tag="migrations")
        op["requestBody"]["required"] = required
        return op

    paths: dict[str, Schema] = {
        base: {"get": _op("Every migration: stage, percent, cohort and request counts since its last "
                          "transition", {"200": _ok("MigrationList")}, tag="migrations")},
        base + "/{route}": {"parameters": [route], "get": _op(
            "One migration", {"200": _ok("MigrationAnswer"), "404": _problem("No such migration")},
            tag="migrations")},
        base + "/{route}/history": {"parameters": [route], "get": _op(
            "The route's transitions, newest first", {"200": _ok("TransitionHistory"),
                                                       "404": _problem("No such route")},
            tag="migrations", params=[{"name": "limit", "in": "query", "required": False,
                                       "schema": {"type": "integer", "minimum": 1, "default": 100}}])},
        base + "/{route}/shadow": {"parameters": [route], "get": _op(
            "What the shadow stage measured since the newest transition: pairs, mismatch rate, "
            "fields (noise marked), examples", {"200": _ok("ShadowReport"),
                                                 "404": _problem("No such migration")},
            tag="migrations", params=[
                {"name": "top", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "default": 10}},
                {"name": "examples", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 0, "default": 5}}])},
        base + "/{route}/start": {"parameters": [route], "post": transition(
            "Start a migration to a service (stage legacy)", "StartRequest")},
        base + "/{route}/shift": {"parameters": [route], "post": transition(
            "Send a sticky percentage of users to `to` (stage canary)", "ShiftRequest")},
        base + "/{route}/guard": {"parameters": [route], "post": transition(
            "Set the migration's guard, freeze or unfreeze it, or take it off", "GuardRequest")},
    }
    for action, summary in (("shadow", "`from` answers, a copy goes to `to` and is compared (shadow)"),
                            ("promote", "All users to `to`, `from` kept as fallback (migrated)"),
                            ("retire", "No more fallback to `from` (retired; from migrated only)"),
                            ("rollback", "All traffic back to `from` (legacy), from any stage")):
        # `.../shadow` also answers GET (the shadow's report)
        item = paths.setdefault(f"{base}/{{route}}/{action}", {"parameters": [route]})
        item["post"] = transition(summary, "ReasonRequest", False)
    return paths


def _certificates() -> dict[str, Schema]:
    """The two paths a gateway gets its workload certificate from (docs/identity.md)."""
    refused = {"400": _problem("Not JSON, or a CSR that is malformed, badly signed or has a weak key "
                               "(code csr-refused)"),
               "403": _problem("The CSR asks for another identity than the credential allows "
                               "(code identity-not-allowed)"),
               "413": _problem("The body is larger than 64 KiB"),
               "503": _problem("No CA here ([identity] ca_dir), or it cannot sign (code ca-unavailable)")}
    return {
        "/api/v1/certificates/join": {"post": {
            "summary": "Trade a one-time join token and a CSR for this service's first certificate",
            "tags": ["certificates"], "security": [{"joinToken": []}],
            "requestBody": _body("JoinRequest"),
            "responses": {"200": {"description": "Issued", "content": {"application/json": {
                              "schema": _ref("IssuedCertificate")}}},
                          "401": _problem("No join token, or an unknown, used, expired or revoked one "
                                          "(codes missing-join-token, invalid-join-token, "
                                          "join-token-used, join-token-expired, join-token-revoked)"),
                          "429": _problem("Too many failed join tokens from this address"),
                          **refused}}},
        "/api/v1/certificates/renew": {"post": {
            "summary": "Renew: the current chain, a CSR for a fresh key, and a signature by the "
                       "current key over the CSR and the timestamp",
            "tags": ["certificates"], "security": [],
            "requestBody": _body("RenewRequest"),
            "responses": {"200": {"description": "Issued", "content": {"application/json": {
                              "schema": _ref("IssuedCertificate")}}},
                          "401": _problem("The chain does not verify against the CA's bundle, the "
                                          "certificate expired, the timestamp is more than 5 minutes "
                                          "off, or the signature does not verify (code renewal-refused)"),
                          **refused,
                          "403": _problem("The CSR asks for another identity (code "
                                          "identity-not-allowed), or the current certificate is "
                                          "revoked (code certificate-revoked)")}}},
        "/api/v1/certificates/revocations": {
            "get": _op("The revocations of the latest config version", {"200": _ok("RevocationList")},
                       tag="certificates"),
            "post": _op("Revoke a certificate by serial, or an identity's certificates issued until "
                        "now: a new config version (peel ca revoke; docs/mtls.md)",
                        {"201": _ok("WriteResult", "Created; a new config version"),
                         "200": _ok("WriteResult", "Revoked already: no change")},
                        body="RevokeRequest", params=[IF_MATCH, REASON], write=True,
                        tag="certificates")},
    }


def _control() -> dict[str, Schema]:
    """What a sidecar asks of its control plane as itself (docs/east-west.md, "Registry")."""
    refused = {"401": _problem("No Peel-Certificate/Peel-Proof, a chain the CA did not issue or that "
                               "expired, a timestamp more than 5 minutes off, or a signature that does "
                               "not verify for this request (code caller-refused)"),
               "503": _problem("No CA here ([identity] ca_dir) (code ca-unavailable)")}
    endpoint = {"application/json": {"schema": _ref("RegisterRequest")}}
    return {
        "/api/v1/control/config": {"get": {
            "summary": "The latest config version and the registered endpoints; with `known`, a long "
                       "poll until either moves (304 when neither did within `wait`)",
            "tags": ["control"], "security": [{"peelProof": []}],
            "parameters": [{"name": "known", "in": "query", "required": False,
                            "schema": {"type": "string"}, "description": "the tag the caller holds"},
                           {"name": "wait", "in": "query", "required": False,
                            "schema": {"type": "number", "minimum": 0, "maximum": 30, "default": 0}}],
            "responses": {"200": {"description": "The current tag's config",
                                  "content": {"application/json": {"schema": _ref("ControlConfig")}}},
                          "304": {"description": "Nothing moved within `wait`"},
                          "400": _problem("A bad wait"), **refused}}},
        "/api/v1/control/endpoints": {
            "post": {"summary": "Register or refresh the caller's endpoint under its service, with its "
                                "identity, for `ttl` seconds (default 30, 5 to 3600)",
                     "tags": ["control"], "security": [{"peelProof": []}],
                     "requestBody": {"required": True, "content": endpoint},
                     "responses": {"200": {"description": "Registered", "content": {"application/json": {
                                       "schema": _ref("Registration")}}},
                                   "422": _problem("Not an https:// endpoint, or a bad ttl"), **refused}},
            "delete": {"summary": "Remove the caller's endpoint from the registry",
                       "tags": ["control"], "security": [{"peelProof": []}],
                       "requestBody": {"required": True, "content": endpoint},
                       "responses": {"200": {"description": "Removed (or was not there)"}, **refused}}},
        "/api/v1/control/counts": {"post": {
            "summary": "Add what the caller's flushers counted (traffic counts, graph edges, guard "
                       "samples, shadow counts and examples) to the store in one transaction, under the "
                       "caller's identity (docs/east-west.md, \"Registry\")",
            "tags": ["control"], "security": [{"peelProof": []}],
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": _ref("CountsReport")}}},
            "responses": {"200": {"description": "Added: the instance the rows are stored under, and how "
                                                 "many rows"},
                          "413": _problem("A body larger than 8 MiB"),
                          "422": _problem("A row out of bounds; `field` names it (edges[3][1]); nothing "
                                          "was written"), **refused}}},
    }


CONTROL_SCHEMAS: dict[str, Schema] = {
    "CountsReport": _obj({
        "instance": {"type": "string", "maxLength": 128, "description": "the sending process"},
        "traffic": {"type": "array", "maxItems": 5000, "description": "[route, config_version, to, "
                    "from, fallback, retired_misses]", "items": {"type": "array"}},
        "edges": {"type": "array", "maxItems": 5000, "description": "[listener, source, destination, "
                  "minute, requests, errors, [bucket counts]]", "items": {"type": "array"}},
        "samples": {"type": "array", "maxItems": 5000, "description": "[route, side, second, requests, "
                    "errors, {bucket: count}]", "items": {"type": "array"}},
        "shadow": {"type": "array", "maxItems": 5000, "description": "[route, config_version, minute, "
                   "{pairs, mismatched, baseline_pairs, baseline_mismatched, dropped, skipped, failed, "
                   "fields}]", "items": {"type": "array"}},
        "examples": {"type": "object", "description": "route: [redacted example pair, at most 10]"}},
        ("instance",)),
    "RegisterRequest": _obj({"endpoint": {"type": "string", "description": "https://host:port of the "
                                          "caller's inbound listener"},
                             "ttl": {"type": "number", "minimum": 5, "maximum": 3600}}, ("endpoint",)),
    "Registration": {"type": "object", "properties": {
        "service": NAME, "endpoint": {"type": "string"}, "identity": {"type": "string"},
        "registered_at": {"type": "string", "format": "date-time"},
        "refreshed_at": {"type": "string", "format": "date-time"},
        "expires_at": {"type": "string", "format": "date-time"},
        "live": {"type": "boolean", "description": "not expired (in lists)"}}},
    "ControlConfig": {"type": "object", "properties": {
        "version": {"type": "integer"}, "tag": {"type": "string"}, "document": _ref("Document"),
        "registered": _array(_ref("Registration"))}},
}


CERTIFICATE_SCHEMAS: dict[str, Schema] = {
    "JoinRequest": {"type": "object", "required": ["csr"], "additionalProperties": False,
                    "properties": {"csr": {"type": "string", "description": "PEM CSR asking for "
                                           "exactly spiffe://<trust domain>/svc/<token's service>"}}},
    "RenewRequest": {"type": "object", "required": ["chain", "csr", "timestamp", "signature"],
                     "additionalProperties": False,
                     "properties": {"chain": {"type": "string", "description": "the current leaf and "
                                              "intermediate, PEM"},
                                    "csr": {"type": "string", "description": "PEM CSR for the same "
                                            "SPIFFE ID and a new key"},
                                    "timestamp": {"type": "integer", "description": "unix seconds"},
                                    "signature": {"type": "string", "description": "base64 signature "
                                                  "by the current key over 'peel-renew/1\\n' + "
                                                  "timestamp + '\\n' + csr"}}},
    "IssuedCertificate": {"type": "object", "required": ["certificate", "bundle", "spiffe_id", "serial",
                                                         "not_after"],
                          "properties": {"certificate": {"type": "string",
                                                         "description": "leaf then intermediate, PEM"},
                                         "bundle": {"type": "string", "description": "the trust "
                                                    "bundle: one or two roots, PEM"},
                                         "spiffe_id": {"type": "string"},
                                         "serial": {"type": "string", "description": "hex"},
                                         "not_after": {"type": "string", "format": "date-time"}}},
}


def _version() -> str:
    try:
        return metadata.version("peel")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def openapi_document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document served at `/openapi.json`."""
    unauthenticated: list[dict[str, list[str]]] = []
    paths: dict[str, Schema] = {
        "/healthz": {"get": {"summary": "Liveness", "tags": ["health"], "security": unauthenticated,
                             "responses": {"200": {"description": "The process answers",
                                                   "content": {"application/json":
                                                               {"schema": _ref("Status")}}}}}},
        "/readyz": {"get": {"summary": "Readiness: a route table is loaded and the gateway is not "
                                       "draining", "tags": ["health"], "security": unauthenticated,
                            "responses": {"200": {"description": "Ready",
                                                  "content": {"application/json":
                                                              {"schema": _ref("Status")}}},
                                          "503": _problem("Not ready")}}},
        "/openapi.json": {"get": {"summary": "This document", "tags": ["meta"],
                                  "responses": {"200": {"description": "OpenAPI 3.1",
                                                        "content": {"application/json": {}}},
                                                **COMMON}}},
        **{path: {"get": {"summary": summary, "tags": ["meta"], "security": unauthenticated,
                          "responses": {"200": {"description": summary, "content": {media: {}}}}}}
           for path, summary, media in (
               ("/dashboard", "The dashboard page (no data in it; docs/dashboard.md)", "text/html"),
               ("/dashboard/app.js", "The dashboard's script", "text/javascript"),
               ("/dashboard/app.css", "The dashboard's styles", "text/css"))},
        "/metrics": {"get": {"summary": "Prometheus metrics of every serving process (absent when "
                                        "metrics.enabled is false; no token needed when metrics.open)",
                             "tags": ["meta"],
                             "responses": {"200": {"description": "Prometheus text format 0.0.4",
                                                   "content": {"text/plain; version=0.0.4": {}}},
                                           **COMMON}}},
        **_collection("service", "Service"),
        **_collection("route", "Route"),
        "/api/v1/mtls/readiness": {"get": _op(
            "Who spoke plaintext (and who mTLS) to the inbound listener within the window "
            "(peel mtls readiness; docs/mtls.md)", {"200": _ok("MtlsReadiness")}, tag="mtls",
            params=[{"name": "window", "in": "query", "required": False,
                     "schema": {"type": "string", "default": "1h"},
                     "description": "a duration: 30m, 1h, 24h (at most a day)"}])},
        "/api/v1/graph": {"get": _op(
            "The dependency graph: edges caller -> service seen by every gateway in the window, with "
            "rate, error rate, p99 and whether a policy declares them (peel graph; docs/east-west.md)",
            {"200": _ok("Graph")}, tag="graph",
            params=[{"name": "window", "in": "query", "required": False,
                     "schema": {"type": "string", "default": "5m"},
                     "description": "a duration: 5m, 1h, 24h (at most a day)"}])},
        "/api/v1/config": {"get": _op("The latest config version with its document",
                                      {"200": _ok("ConfigVersion")}, tag="config")},
        "/api/v1/config/stored": {"get": {
            "summary": "The latest document's stored text (canonical JSON, a line per service and "
                       "route): what `peel apply` computes its changes against",
            "tags": ["config"],
            "responses": {"200": {"description": "OK", "headers": ETAG,
                                  "content": {"application/json": {"schema": _ref("Document")}}},
                          **COMMON}}},
        "/api/v1/config/versions": {"get": _op(
            "History of config versions, newest first", {"200": _ok("History")}, tag="config",
            params=[{"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}}])},
        "/api/v1/config/versions/{n}": {"get": _op(
            "One config version with its document",
            {"200": _ok("ConfigVersion"), "404": _problem("No such config version")}, tag="config",
            params=[{"name": "n", "in": "path", "required": True, "schema": {"type": "integer"}}])},
        "/api/v1/config/apply": {"post": _op(
            "Replace the whole document (or apply changes to the version in If-Match); with dry_run "
            "only the diff is returned",
            {"200": _ok("WriteResult")}, body="ApplyRequest", params=[IF_MATCH], write=True,
            tag="config")},
        "/api/v1/config/rollback": {"post": _op(
            "Commit a new config version whose document is version N's",
            {"200": _ok("WriteResult")}, body="RollbackRequest", params=[IF_MATCH], write=True,
            tag="config")},
        "/api/v1/config/diff": {"get": _op(
            "The difference between two config versions",
            {"200": _ok("DiffAnswer"), "400": _problem("Missing or bad version"),
             "404": _problem("No such config version")}, tag="config",
            params=[{"name": "from", "in": "query", "required": True, "schema": {"type": "integer"}},
                    {"name": "to", "in": "query", "required": False, "schema": {"type": "integer"},
                     "description": "default: the latest"}])},
        "/api/v1/match": {"post": _op(
            "Which route and service would answer this request",
            {"200": _ok("MatchResult"), "400": _problem("Not JSON or a refused path"),
             "404": _problem("No route matches (code no-route)"),
             "422": _problem("A bad method, URL or header")}, body="MatchRequest", tag="match")},
        **_migrations(),
        **_certificates(),
        **_control(),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Peel admin API", "version": _version(),
                 "description": "Services, routes and config versions of a Peel gateway. Every "
                                "change creates a config version with the token's name as actor."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {"schemas": {**SCHEMAS, **CERTIFICATE_SCHEMAS, **CONTROL_SCHEMAS},
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "A token from "
                                                                     "`peel token create NAME`"},
                                           "joinToken": {"type": "http", "scheme": "bearer",
                                                         "description": "A one-time token from "
                                                                        "`peel join-token create`"},
                                           "peelProof": {"type": "apiKey", "in": "header",
                                                         "name": "Peel-Proof",
                                                         "description": "With Peel-Certificate: the "
                                                         "caller's chain and its key's signature over "
                                                         "the request (gateway.identity.caller)"}}},
    }
