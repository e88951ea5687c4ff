"""Beta values under every spelling a framework reads as the beta source (issue 11, items 7 and 8)."""

from __future__ import annotations

from typing import Any

import pytest

from facade.beta import BetaTrust, sign
from facade.beta_filter import TableBetaFilter
from routes.compiler import compile_document
from routes.grammar import cookie_name_key, cookie_part_keys
from routes.model import Document
from routes.table import RouteTable

SECRET = "s" * 32
TRUSTED, UNTRUSTED = "10.1.1.1", "192.0.2.1"
H = list[tuple[bytes, bytes]]


def table(beta: dict[str, Any]) -> RouteTable:
    return compile_document(Document.parse({
        "services": [{"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]},
                     {"name": "orders", "endpoints": ["http://10.0.0.7:9000"]}],
        "routes": [{"name": "orders", "match": {"path_prefix": "/orders"}, "service": "legacy",
                    "migration": {"to": "orders", "stage": "canary", "percent": 10,
                                  "beta": {**beta, "allow": ["ada"]}}}]}), 1)


def run(beta: dict[str, Any], headers: H, client: str) -> tuple[H, dict[Any, str], TableBetaFilter]:
    filters = TableBetaFilter(BetaTrust(["10.0.0.0/8"], SECRET))
    cleaned, users = filters.for_table(table(beta)).apply(headers, client, 1000.0)
    return (headers if cleaned is None else cleaned), dict(users), filters


# -- item 7: a value that is not ASCII is untrusted, never an error -------------------------------

@pytest.mark.parametrize("value", [b"v1.ad\xe9.99999.abc", b"v1.ada.99999.\xe9\xe9", b"ad\xe9"])
def test_a_non_ascii_value_is_stripped_and_counted(value: bytes) -> None:
    out, users, filters = run({"header": "X-Beta-User"}, [(b"x-beta-user", value), (b"a", b"1")], TRUSTED)
    assert out == [(b"a", b"1")] and users == {}
    assert filters.stripped == 1


def test_a_non_ascii_signed_value_is_not_one() -> None:
    trust = BetaTrust((), SECRET)
    assert trust.user("v1.ad\xe9.99999.abc", UNTRUSTED, 0) is None
    good = sign(SECRET, "ada", 99999)
    assert trust.user(good, UNTRUSTED, 0) == "ada"  # and a real one still is
    assert trust.user(good[:-1] + "\xe9", UNTRUSTED, 0) is None


# -- item 8: other spellings of the beta header and cookie ----------------------------------------

@pytest.mark.parametrize("client", [TRUSTED, UNTRUSTED])
def test_underscore_spellings_of_the_beta_header_are_stripped_from_everyone(client: str) -> None:
    out, users, filters = run({"header": "X-Beta-User"},
                              [(b"x_beta_user", b"ada"), (b"x-beta_user", b"ada"), (b"x_other", b"1")],
                              client)
    assert out == [(b"x_other", b"1")] and users == {}
    assert filters.stripped == 2


def test_the_exact_header_from_a_trusted_network_still_steers() -> None:
    out, users, _ = run({"header": "X-Beta-User"}, [(b"x-beta-user", b"ada"), (b"x_beta_user", b"bob")],
                        TRUSTED)
    assert out == [(b"x-beta-user", b"ada")]
    assert users == {("header", b"x-beta-user"): "ada"}


@pytest.mark.parametrize(("cookie", "left"), [
    (b"beta =ada", None),                         # spaces around the name: the beta cookie
    (b"a=1,beta=ada; theme=dark", b"theme=dark"),  # hidden after a comma: the pair goes whole
    (b"theme=dark; a=1, beta=ada", b"theme=dark"),
    (b"%62eta=ada; theme=dark", b"theme=dark"),   # percent-encoded (PHP)
    (b"BETA=ada; theme=dark", b"theme=dark"),     # another case (ASP.NET)
    (b"beta[0]=ada; theme=dark", b"theme=dark"),  # PHP array
])
def test_untrusted_cookie_spellings_are_stripped(cookie: bytes, left: bytes | None) -> None:
    out, users, filters = run({"cookie": "beta"}, [(b"cookie", cookie), (b"a", b"1")], UNTRUSTED)
    assert users == {}
    assert out == ([(b"cookie", left)] if left is not None else []) + [(b"a", b"1")]
    assert filters.stripped == 1


def test_cookie_spellings_other_than_the_name_do_not_steer_from_trusted_networks_either() -> None:
    out, users, _ = run({"cookie": "beta_user"},
                        [(b"cookie", b"beta.user=bob; beta_user=ada; a=1,beta_user=eve")], TRUSTED)
    assert out == [(b"cookie", b"beta_user=ada")]
    assert users == {("cookie", "beta_user"): "ada"}


def test_a_trusted_cookie_with_spaces_around_the_name_steers_as_the_name() -> None:
    out, users, _ = run({"cookie": "beta"}, [(b"cookie", b" beta = ada ; theme=dark")], TRUSTED)
    assert out == [(b"cookie", b" beta = ada ; theme=dark")]
    assert users == {("cookie", "beta"): "ada"}


def test_other_cookies_and_values_with_commas_pass() -> None:
    headers = [(b"cookie", b"theme=dark; list=a,b; betamax=1")]
    out, users, filters = run({"cookie": "beta"}, headers, UNTRUSTED)
    assert out == headers and users == {} and filters.stripped == 0


@pytest.mark.parametrize(("name", "key"), [
    ("beta", "beta"), (" beta ", "beta"), ("%62eta", "beta"), ("Be.Ta", "be_ta"), ("be ta", "be_ta"),
    ("be+ta", "be_ta"), ("beta[x]", "beta"),
])
def test_cookie_name_key(name: str, key: str) -> None:
    assert cookie_name_key(name) == key


def test_cookie_part_keys_include_names_after_commas() -> None:
    assert list(cookie_part_keys("a=1,beta=ada, c=2")) == ["a", "beta", "c"]
    assert list(cookie_part_keys("list=a,b")) == ["list"]
