"""The shadow stage in the document and in the decision: validation naming the field, the
export/apply round trip, where each method's copy goes, and who is shadowed."""

from __future__ import annotations

from typing import Any

import pytest

from facade.decision import Decision, Facts, decide
from routes.diff import diff
from routes.errors import RuleError
from routes.migration import STAGES, Beta, Migration, ShadowSpec
from routes.model import Document


def doc(migration: Any) -> dict[str, Any]:
    return {"services": [{"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]},
                         {"name": "orders", "endpoints": ["http://10.0.0.7:9000"]}],
            "routes": [{"name": "orders", "match": {"path_prefix": "/orders"}, "service": "legacy",
                        "migration": migration}]}


FULL = {"to": "orders", "stage": "shadow",
        "shadow": {"percent": 20, "baseline_percent": 5.5, "unsafe_methods": True,
                   "sandbox": "http://10.0.0.9:8080", "max_body": 4096, "timeout": "250ms",
                   "concurrency": 2, "queue": 16,
                   "compare": {"headers": ["etag"],
                               "ignore": {"paths": ["$.items[*].updated_at"], "patterns": ["uuid"],
                                          "regexes": ["^ord-[0-9]+$"]}}}}


def test_the_shadow_stage_sits_between_legacy_and_canary() -> None:
    assert list(STAGES)[:3] == ["legacy", "shadow", "canary"]
    assert STAGES["shadow"].shadow and STAGES["shadow"].split == "none"
    assert not any(p.shadow for name, p in STAGES.items() if name != "shadow")


def test_full_shadow_block_round_trips_unchanged() -> None:
    document = Document.parse(doc(FULL))
    printed = document.to_dict()
    assert printed["routes"][0]["migration"] == FULL
    assert Document.parse(printed).to_dict() == printed
    assert not diff(document, Document.parse(printed))


def test_defaults_are_left_out() -> None:
    migration = Migration.parse({"to": "orders", "stage": "shadow", "shadow": {}}, "m")
    assert migration.to_dict() == {"to": "orders", "stage": "shadow", "shadow": {}}
    spec = migration.shadow_spec
    assert (spec.share, spec.baseline_share, spec.max_body, spec.timeout) == (10_000, 0, 1 << 20, 5.0)
    # No block: the defaults apply in stage shadow, and nothing is printed.
    bare = Migration.parse({"to": "orders", "stage": "shadow"}, "m")
    assert bare.to_dict() == {"to": "orders", "stage": "shadow"} and bare.shadow_spec == ShadowSpec()


@pytest.mark.parametrize(("shadow", "field"), [
    ({"percent": 101}, "m.shadow.percent"),
    ({"baseline_percent": "5"}, "m.shadow.baseline_percent"),
    ({"unsafe_methods": "yes"}, "m.shadow.unsafe_methods"),
    ({"sandbox": "ftp://x"}, "m.shadow.sandbox"),
    ({"sandbox": {"url": "http://10.0.0.9:1", "weight": 5}}, "m.shadow.sandbox"),
    ({"max_body": -1}, "m.shadow.max_body"),
    ({"max_body": 17 << 20}, "m.shadow.max_body"),
    ({"timeout": "soon"}, "m.shadow.timeout"),
    ({"concurrency": 0}, "m.shadow.concurrency"),
    ({"queue": True}, "m.shadow.queue"),
    ({"queue": 0}, "m.shadow.queue"),
    ({"compare": {"headers": ["bad header"]}}, "m.shadow.compare.headers[0]"),
    ({"compare": {"ignore": {"paths": ["items"]}}}, "m.shadow.compare.ignore.paths[0]"),
    ({"compare": {"ignore": {"regexes": ["(a"]}}}, "m.shadow.compare.ignore.regexes[0]"),
    ({"samples": 1}, "m.shadow.samples"),
    ("all", "m.shadow"),
])
def test_refusals_name_the_field(shadow: Any, field: str) -> None:
    with pytest.raises(RuleError) as caught:
        Migration.parse({"to": "orders", "stage": "shadow", "shadow": shadow}, "m")
    assert caught.value.field == field


@pytest.mark.parametrize(("spec", "method", "target"), [
    (ShadowSpec(), "GET", "to"),
    (ShadowSpec(), "HEAD", "to"),
    (ShadowSpec(), "OPTIONS", "to"),
    (ShadowSpec(), "POST", None),
    (ShadowSpec(), "DELETE", None),
    (ShadowSpec(), "PUT", None),
    (ShadowSpec(unsafe_methods=True), "POST", "to"),
    (Migration.parse({"to": "o", "shadow": {"sandbox": "http://10.0.0.9:1"}}, "m").shadow_spec,
     "POST", "sandbox"),
    (Migration.parse({"to": "o", "shadow": {"sandbox": "http://10.0.0.9:1"}}, "m").shadow_spec,
     "GET", "to"),
])
def test_where_each_method_is_copied(spec: ShadowSpec, method: str, target: str | None) -> None:
    assert spec.target(method) == target


BETA = Beta(header="X-Beta-User", allow=("alice",), deny=("bob",))


def shadow(percent: int) -> Migration:
    return Migration.parse({"to": "orders", "stage": "shadow", "shadow": {"percent": percent},
                            "beta": BETA.to_dict()}, "m")


def test_shadow_answers_from_and_samples_per_request() -> None:
    m = shadow(20)
    # `from` answers always; the draw decides the copy (0.19 < 20 %, 0.2 is not).
    assert decide(m, Facts("k"), "orders", rand=lambda: 0.19) == Decision("from", "percent", shadow=True)
    assert decide(m, Facts("k"), "orders", rand=lambda: 0.2) == Decision("from", "percent")
    draws = iter([i / 1000 for i in range(1000)])
    shadowed = sum(decide(m, Facts("k"), "orders", rand=lambda: next(draws)).shadow for _ in range(1000))
    assert shadowed == 200


def test_beta_users_in_the_shadow_stage() -> None:
    m = shadow(0)
    # allowed: shadowed whatever the percentage; denied: never, not even at 100 %.
    assert decide(m, Facts("k", "alice"), "orders", rand=lambda: 0.99) == \
        Decision("from", "beta-allow", shadow=True)
    assert decide(shadow(100), Facts("k", "bob"), "orders", rand=lambda: 0.0) == \
        Decision("from", "beta-deny")
    assert decide(m, Facts("k", "carol"), "orders", rand=lambda: 0.0) == Decision("from", "percent")


@pytest.mark.parametrize("stage", ["legacy", "canary", "migrated", "retired"])
def test_other_stages_never_shadow(stage: str) -> None:
    m = Migration.parse({"to": "orders", "stage": stage, "percent": 50,
                         "shadow": {"percent": 100}, "beta": BETA.to_dict()}, "m")
    for user in (None, "alice", "bob"):
        assert not decide(m, Facts("k", user), "orders", rand=lambda: 0.0).shadow
