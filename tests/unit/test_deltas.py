"""An edit made with `Document.replace_items` carries its `Delta`, and the diff, the compiler and
the codec use it to do only what changed. Each test checks that the short way gives exactly what the
long way gives (the same document, diff, table answers and stored text), over random edits."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routes.changes import delete_route, put_route, put_service
from routes.compiler import IncrementalCompiler, compile_document
from routes.diff import diff
from routes.document_text import DocumentCodec
from routes.errors import RuleError
from routes.model import Document, Route, Service
from routes.patch import DocumentPatch
from routes.table import LEAF


def base_data(routes: int = 30) -> dict[str, Any]:
    return {"services": [{"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]},
                         {"name": "orders", "endpoints": ["http://10.0.0.7:9000"]}],
            "routes": [{"name": f"r{i:02d}", "match": {"path_prefix": f"/r{i}"}, "service": "legacy"}
                       for i in range(routes)]
            + [{"name": "hosted", "match": {"hosts": ["api.example.com"], "path_prefix": "/"},
                "service": "orders"},
               {"name": "moving", "match": {"path_prefix": "/orders"}, "service": "legacy",
                "migration": {"to": "orders", "stage": "canary", "percent": 10}}]}


def plain(document: Document) -> Document:
    """`document` without what its builds kept (index, delta): the long way for every check."""
    return Document(document.services, document.routes, document.revocations, document.mesh)


def route(name: str, prefix: str, service: str = "legacy") -> Route:
    """A plain route; with `service` "beta:header" or "beta:cookie", a canary with a beta list
    picked by that header or cookie (the table's beta names follow it)."""
    data: dict[str, Any] = {"name": name, "match": {"path_prefix": prefix}, "service": service}
    if service.startswith("beta:"):
        data["service"] = "legacy"
        data["migration"] = {"to": "orders", "stage": "canary", "percent": 10,
                             "beta": {service[5:]: "x-beta", "allow": ["ada"]}}
    return Route.parse(data, "route")


# an edit: ("put", name, prefix, service) or ("delete", name)
edits = st.lists(st.one_of(
    st.tuples(st.just("put"), st.sampled_from([f"r{i:02d}" for i in range(35)] + ["hosted", "zz", "a"]),
              st.sampled_from(["/a", "/b", "/r3", "/r3/x", "/orders/x", "/zz"]),
              st.sampled_from(["legacy", "orders", "beta:header", "beta:cookie"])),
    st.tuples(st.just("delete"), st.sampled_from([f"r{i:02d}" for i in range(35)] + ["hosted"]))),
    min_size=1, max_size=8)


def apply(document: Document, edit: tuple[Any, ...]) -> Document:
    if edit[0] == "put":
        return put_route(document, route(edit[1], edit[2], edit[3]))
    return delete_route(document, edit[1])


def the_long_way(document: Document, edit: tuple[Any, ...]) -> Document:
    if edit[0] == "put":
        routes = [r for r in document.routes if r.name != edit[1]] + [route(*edit[1:])]
    else:
        routes = [r for r in document.routes if r.name != edit[1]]
    return Document.build(document.services, routes, revocations=document.revocations,
                          mesh=document.mesh)


PATHS = ["/", "/a", "/b", "/r3", "/r3/x", "/r12", "/r29/y", "/orders/x", "/zz", "/nowhere"]


def same_answers(a: Any, b: Any) -> None:
    for host in ("example.com", "api.example.com"):
        for path in PATHS:
            x = a.match("GET", host, path, b"", [])
            y = b.match("GET", host, path, b"", [])
            assert (x and (x.name, x.service.name)) == (y and (y.name, y.service.name)), (host, path)


def lines_agree(codec: DocumentCodec) -> None:
    """The codec's memo of its last document's route lines is whole and consistent."""
    memo = codec._routes
    assert memo.owner is codec.document and codec.document is not None
    assert len(memo.items) == len(memo.lines) == len(memo.by_line) == len(codec.document.routes)
    for item, line in zip(memo.items, memo.lines, strict=True):
        assert memo.by_line[line] is item and item._line == line
        assert codec.document.route(item.name) is item


@settings(max_examples=60, deadline=None)
@given(edits)
def test_edits_with_a_delta_give_what_the_long_way_gives(steps: list[tuple[Any, ...]]) -> None:
    document = Document.parse(base_data())
    compiler = IncrementalCompiler()
    table = first = compiler(document, 1)
    first_whole = compile_document(plain(document), 1)
    codec = DocumentCodec()
    # a worker: reads every version back from its text, compiles it with its own compiler
    worker, worker_compiler = DocumentCodec(), IncrementalCompiler()
    worker_compiler(worker.decode(codec.encode(document)), 1)
    for version, edit in enumerate(steps, 2):
        try:
            expected = the_long_way(document, edit)
        except RuleError as exc:
            with pytest.raises(RuleError) as refused:
                apply(document, edit)
            assert refused.value.field == exc.field
            continue
        try:
            edited = apply(document, edit)
        except RuleError:
            assert edit[0] == "delete" and document.route(edit[1]) is None  # not found: 404
            continue
        assert edited.delta is not None and edited.delta.base is document
        assert edited == expected
        assert [r.name for r in edited.routes] == sorted(r.name for r in edited.routes)
        for r in expected.routes:
            assert edited.route(r.name) == r
        # the diff
        assert diff(document, edited).to_dict() == diff(plain(document), plain(edited)).to_dict()
        # the table: compiled from the last one, as a whole one answers
        table = compiler(edited, version)
        whole = compile_document(plain(edited), version)
        assert [r.spec for r in table.routes] == [r.spec for r in whole.routes]
        assert set(table.names()) == set(whole.names())
        for compiled in table.routes:
            assert table.route(compiled.name) is compiled
        same_answers(table, whole)
        assert (table.beta_headers, table.beta_cookies) == (whole.beta_headers, whole.beta_cookies)
        same_answers(first, first_whole)  # the tables before it are untouched
        assert not LEAF  # the frozen leaves' shared children: never written
        # the stored text: as a codec that never saw the base writes it, and it reads back
        text = codec.encode(edited)
        assert text == DocumentCodec().encode(edited)
        lines_agree(codec)
        assert DocumentCodec().decode(text, stored=False) == edited
        before = {r.name: r for r in worker.document.routes} if worker.document is not None else {}
        read = worker.decode(text)
        assert read == edited and read.delta is not None  # read as an edit of the last version
        assert {r.name for r in read.routes if before.get(r.name) is not r} <= read.delta.routes
        lines_agree(worker)
        assert read.routes == tuple(sorted(read.routes, key=lambda r: r.name))
        served = worker_compiler(read, version)
        same_answers(served, whole)
        assert (served.beta_headers, served.beta_cookies) == (whole.beta_headers, whole.beta_cookies)
        assert set(served.names()) == set(whole.names())
        document = edited


def test_a_refused_edit_names_the_field_as_before_and_changes_nothing() -> None:
    document = Document.parse(base_data())
    with pytest.raises(RuleError) as refused:
        put_route(document, route("new", "/a", "nowhere"))
    assert refused.value.field == "routes[new].service"
    with pytest.raises(RuleError) as refused:
        put_route(document, route("new", "/r3"))  # r03's match and priority
    assert refused.value.field == "routes[new].match"
    assert document == Document.parse(base_data())


def test_a_service_edit_carries_its_delta_the_long_way() -> None:
    document = Document.parse(base_data())
    service = Service.parse({"name": "orders", "endpoints": ["http://10.0.0.8:9000"]}, "service")
    edited = put_service(document, service)
    assert edited.delta is not None and edited.delta.services == {"orders"}
    assert diff(document, edited).to_dict() == diff(plain(document), plain(edited)).to_dict()
    compiler = IncrementalCompiler()
    compiler(document, 1)
    table = compiler(edited, 2)  # services changed: the whole compile with `previous`
    same_answers(table, compile_document(plain(edited), 2))
    assert table.services["orders"].endpoints[0].url == "http://10.0.0.8:9000"


def test_a_patch_applies_with_a_delta_and_a_name_put_twice_is_refused() -> None:
    document = Document.parse(base_data())
    patch = DocumentPatch.parse({"routes": [{"name": "r05", "match": {"path_prefix": "/five"},
                                             "service": "orders"}],
                                 "delete_routes": ["r06"]})
    edited = patch.apply(document)
    assert edited.delta is not None and edited.delta.routes == {"r05", "r06"}
    assert edited.route("r06") is None and edited.route("r05").service == "orders"  # type: ignore[union-attr]
    twice = DocumentPatch.parse({"routes": [
        {"name": "x", "match": {"path_prefix": "/x"}, "service": "legacy"},
        {"name": "x", "match": {"path_prefix": "/y"}, "service": "legacy"}]})
    with pytest.raises(RuleError) as refused:
        twice.apply(document)
    assert refused.value.field == "routes[x].name"


def test_a_delta_of_another_base_is_not_used() -> None:
    """The diff and the compiler take the delta only against its own base."""
    document = Document.parse(base_data())
    other = Document.parse(base_data())  # equal, but not the base
    edited = put_route(document, route("r04", "/four"))
    assert diff(other, edited).to_dict() == diff(plain(other), plain(edited)).to_dict()
    compiler = IncrementalCompiler()
    compiler(other, 1)
    same_answers(compiler(edited, 2), compile_document(plain(edited), 2))


def test_a_chain_of_edits_does_not_keep_the_earlier_versions_alive() -> None:
    import gc
    import weakref

    document = Document.parse(base_data())
    first = weakref.ref(document)
    for i in range(5):
        document = put_route(document, route(f"r{i:02d}", f"/moved{i}"))
    gc.collect()
    assert first() is None
    assert document.delta is not None and document.delta.base is None  # its base is gone too
    # a delta whose base is gone is not used: the long ways
    codec = DocumentCodec()
    assert codec.encode(document) == DocumentCodec().encode(plain(document))


def test_a_patch_with_a_new_head_keeps_its_delta_and_changes_the_mesh() -> None:
    document = Document.parse(base_data())
    patch = DocumentPatch.parse({"routes": [{"name": "r07", "match": {"path_prefix": "/seven"},
                                             "service": "legacy"}],
                                 "head": {"mesh": {"inbound_mtls": "strict"}}})
    edited = patch.apply(document)
    long_way = Document.parse({**base_data(), "mesh": {"inbound_mtls": "strict"},
                               "routes": [r if r["name"] != "r07" else
                                          {"name": "r07", "match": {"path_prefix": "/seven"},
                                           "service": "legacy"} for r in base_data()["routes"]]})
    assert edited == long_way and edited.delta is not None
    assert diff(document, edited).to_dict() == diff(plain(document), plain(edited)).to_dict()
    assert diff(document, edited).mesh is not None
    compiler = IncrementalCompiler()
    compiler(document, 1)
    assert compiler(edited, 2).inbound_mtls == "strict"
    codec = DocumentCodec()
    codec.encode(document)
    assert codec.encode(edited) == DocumentCodec().encode(plain(edited))


R01 = '{"match":{"path_prefix":"/r1"},"name":"r01","service":"legacy"}'
R02 = '{"match":{"path_prefix":"/r2"},"name":"r02","service":"legacy"}'


@pytest.mark.parametrize("edit", [
    pytest.param(lambda t: t.replace(R01, R01 + ',\n{"match":{"path_prefix":"/one"},"name":"r01",'
                                     '"service":"legacy"}'), id="a name on two lines"),
    pytest.param(lambda t: t.replace(R01, R01 + ",\n" + R01), id="a line twice"),
    # r01 as before and again with another prefix, r02 gone: as many routes as before
    pytest.param(lambda t: t.replace(R02, '{"match":{"path_prefix":"/one"},"name":"r01",'
                                     '"service":"legacy"}'), id="a name twice, another gone"),
])
def test_a_text_that_repeats_a_route_is_refused_as_the_whole_build_refuses_it(edit: Any) -> None:
    codec = DocumentCodec()
    text = codec.encode(Document.parse(base_data(3)))
    reader = DocumentCodec()
    reader.decode(text, stored=False)  # a worker that read the version before
    broken = edit(text)
    assert broken != text
    for fresh_reader in (reader, codec, DocumentCodec()):
        with pytest.raises(RuleError) as refused:
            fresh_reader.decode(broken, stored=False)
        assert refused.value.field == "routes[r01].name"


def test_the_same_document_encoded_again_is_the_same_text_at_no_cost() -> None:
    codec = DocumentCodec()
    document = Document.parse(base_data())
    text = codec.encode(document)
    assert codec.encode(document) is text  # the snapshot of a commit: no second encode
    edited = put_route(document, route("r01", "/one"))
    assert codec.encode(edited) != text and codec.encode(document) == text
