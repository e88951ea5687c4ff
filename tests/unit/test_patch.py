"""routes/patch.py: a document applied as the items that differ from a stored version gives the
document the whole file gives, and `peel apply` falls back to the whole document when it must."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from gateway.cli.client import AdminError
from gateway.cli.rules import CHANGES_TRIES, apply_document
from routes.document_text import DocumentCodec
from routes.errors import RuleError
from routes.model import Document, Route
from routes.patch import DocumentPatch, changes_between, changes_from_data

BASE: dict[str, Any] = {
    "services": [{"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]},
                 {"name": "orders", "endpoints": ["http://10.0.0.7:9000"]},
                 {"name": "old", "endpoints": ["http://10.0.0.9:9000"]}],
    "routes": [{"name": f"r{i}", "match": {"path_prefix": f"/r{i}"}, "service": "legacy"}
               for i in range(20)]
    + [{"name": "orders", "match": {"path_prefix": "/orders"}, "service": "legacy",
        "migration": {"to": "orders", "stage": "canary", "percent": 10}},
       {"name": "gone", "match": {"path_prefix": "/gone"}, "service": "old"}],
}


def stored(data: dict[str, Any]) -> tuple[str, Document]:
    document = Document.parse(data)
    return DocumentCodec().encode(document), document


def edited() -> dict[str, Any]:
    new = copy.deepcopy(BASE)
    new["routes"][3]["match"]["path_prefix"] = "/three"                # replaced
    new["routes"][20]["migration"]["percent"] = 50                     # replaced
    del new["routes"][21]                                              # deleted
    new["services"] = [s for s in new["services"] if s["name"] != "old"]  # deleted
    new["services"][0]["endpoints"].append("http://10.0.0.6:8080")     # replaced
    new["services"].append({"name": "billing", "endpoints": ["http://10.0.1.1:80"]})  # added
    new["routes"].append({"name": "billing", "match": {"path_prefix": "/billing"},
                          "service": "billing"})                       # added
    new["mesh"] = {"inbound_mtls": "strict"}                            # the head
    return new


def test_the_changes_are_the_items_that_differ_and_give_the_whole_document() -> None:
    text, old = stored(BASE)
    whole = Document.parse(edited())
    changes = changes_between(text, whole)
    assert changes is not None
    assert sorted(r["name"] for r in changes["routes"]) == ["billing", "orders", "r3"]
    assert sorted(s["name"] for s in changes["services"]) == ["billing", "legacy"]
    assert changes["delete_routes"] == ["gone"] and changes["delete_services"] == ["old"]
    assert changes["head"] == {"mesh": {"inbound_mtls": "strict"}}
    patch = DocumentPatch.parse(json.loads(json.dumps(changes)))  # as it travels
    applied = patch.apply(old)
    assert applied == whole
    # the unchanged routes are the stored document's own objects
    assert applied.route("r7") is old.route("r7") and applied.route("r3") is not old.route("r3")


def test_no_difference_is_no_change_and_the_head_goes_back() -> None:
    text, old = stored(edited())
    assert changes_between(text, Document.parse(edited())) == {}
    assert not DocumentPatch.parse({})
    assert DocumentPatch.parse({}).apply(old) == old
    back = changes_between(text, Document.parse({k: v for k, v in edited().items() if k != "mesh"}))
    assert back == {"head": {}}
    assert DocumentPatch.parse(back).apply(old).mesh is None


def test_a_file_gives_the_same_changes_parsing_only_the_routes_not_as_stored(
        monkeypatch: pytest.MonkeyPatch) -> None:
    text, old = stored(BASE)
    parsed: list[str] = []
    parse = Route.parse

    def counting(data: Any, where: str, **kwargs: Any) -> Route:
        parsed.append(where)
        return parse(data, where, **kwargs)

    monkeypatch.setattr(Route, "parse", staticmethod(counting))
    changes = changes_from_data(text, edited())
    assert sorted(parsed) == ["routes[20]", "routes[21]", "routes[3]"]  # r3, orders, billing
    monkeypatch.setattr(Route, "parse", parse)
    assert changes == changes_between(text, Document.parse(edited()))
    assert DocumentPatch.parse(changes).apply(old) == Document.parse(edited())
    # a route written otherwise than its stored line (a default spelled out) is parsed and, being
    # equal, not sent
    spelled = copy.deepcopy(BASE)
    spelled["routes"][5]["priority"] = Document.parse(BASE).route("r5").priority  # type: ignore[union-attr]
    assert changes_from_data(text, spelled) == {}


@pytest.mark.parametrize(("change", "why"), [
    (lambda d: d["routes"].append(dict(d["routes"][0])), "a name on two routes"),
    (lambda d: d["routes"].append({"name": "x", "match": {"path_prefix": "/x"}, "service": "nowhere"}),
     "a service the document does not hold"),
    (lambda d: d.update(routes={"r0": {}}), "routes that are not a list"),
])
def test_a_file_the_changes_cannot_tell_goes_whole(change: Any, why: str) -> None:
    data = copy.deepcopy(BASE)
    change(data)
    assert changes_from_data(stored(BASE)[0], data) is None, why


def test_a_file_route_that_does_not_parse_is_named_as_in_the_whole_document() -> None:
    data = copy.deepcopy(BASE)
    data["routes"][7]["match"] = {"path_prefix": "no-slash"}
    with pytest.raises(RuleError) as here:
        changes_from_data(stored(BASE)[0], data)
    with pytest.raises(RuleError) as whole:
        Document.parse(data)
    assert here.value.field == whole.value.field == "routes[r7].match.path_prefix"


def test_text_in_another_layout_gives_no_changes() -> None:
    assert changes_between(json.dumps(BASE), Document.parse(BASE)) is None


@pytest.mark.parametrize(("changes", "field"), [
    ({"routes": [{"name": "x", "match": {"path_prefix": "/x"}}]}, "routes[x].service"),
    ({"services": [{"name": "s", "endpoints": ["ftp://x"]}]}, "services[s].endpoints[0]"),
    ({"delete_routes": [3]}, "changes.delete_routes[0]"),
    ({"delete_routes": ["nope"]}, "changes.delete_routes[0]"),
    ({"delete_services": ["legacy"]}, "routes["),  # still used
    ({"head": {"mesh": {"inbound_mtls": "loose"}}}, "mesh.inbound_mtls"),
    ({"routes": [], "extra": 1}, "changes.extra"),
])
def test_a_bad_change_is_refused_naming_the_field(changes: dict[str, Any], field: str) -> None:
    _, old = stored(BASE)
    with pytest.raises(RuleError) as refused:
        DocumentPatch.parse(changes).apply(old)
    assert refused.value.field.startswith(field), refused.value.field


class FakeClient:
    """The admin client's seam: a stored version and what each apply was sent."""

    def __init__(self, text: str | None, version: int = 4, refusals: int = 0) -> None:
        self.text, self.version, self.refusals = text, version, refusals
        self.sent: list[tuple[str, Any, int | None]] = []

    def stored_config(self) -> tuple[int, str] | None:
        return None if self.text is None else (self.version, self.text)

    def apply_changes(self, changes: dict[str, Any], version: int, *, dry_run: bool = False,
                      reason: str | None = None) -> dict[str, Any]:
        self.sent.append(("changes", changes, version))
        if self.refusals:
            self.refusals -= 1
            raise AdminError("config version 4 is not the latest", status=412)
        return {"version": version + 1}

    def apply(self, document: Any, *, dry_run: bool = False, reason: str | None = None,
              if_match: int | None = None) -> dict[str, Any]:
        self.sent.append(("document", document, if_match))
        return {"version": 9}


def test_peel_apply_sends_the_changes_against_the_version_it_read() -> None:
    client = FakeClient(stored(BASE)[0])
    apply_document(client, edited())  # type: ignore[arg-type]
    ((kind, changes, version),) = client.sent
    assert kind == "changes" and version == 4 and changes["delete_routes"] == ["gone"]


def test_peel_apply_reads_again_when_another_writer_got_in_first_then_sends_it_whole() -> None:
    client = FakeClient(stored(BASE)[0], refusals=1)
    apply_document(client, edited())  # type: ignore[arg-type]
    assert [kind for kind, _, _ in client.sent] == ["changes", "changes"]
    client = FakeClient(stored(BASE)[0], refusals=CHANGES_TRIES)
    apply_document(client, edited())  # type: ignore[arg-type]
    assert [kind for kind, _, _ in client.sent] == ["changes"] * CHANGES_TRIES + ["document"]


def test_peel_apply_sends_the_whole_document_when_it_must() -> None:
    bad = copy.deepcopy(BASE)
    bad["routes"][0]["service"] = "nowhere"
    cases = [(FakeClient(stored(BASE)[0]), bad, None),        # refused here: the gateway names it
             (FakeClient(None), edited(), None),                 # an older gateway
             (FakeClient(json.dumps(BASE)), edited(), None),     # stored in another layout
             (FakeClient(stored(BASE)[0]), edited(), 3)]         # If-Match not the latest: 412 there
    for client, data, if_match in cases:
        apply_document(client, data, if_match=if_match)  # type: ignore[arg-type]
        assert client.sent == [("document", data, if_match)]
    client = FakeClient(stored(BASE)[0])
    apply_document(client, edited(), if_match=4)  # type: ignore[arg-type]
    assert client.sent[0][0] == "changes"
    client = FakeClient(stored(BASE)[0], refusals=1)
    with pytest.raises(AdminError):  # a 412 against the version the operator named is theirs
        apply_document(client, edited(), if_match=4)  # type: ignore[arg-type]
