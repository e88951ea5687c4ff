"""Edge TLS without sockets: settings, certificate checks naming the setting, SNI choice, reload,
the redirect's Location and the HSTS wrapper."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import ssl
from pathlib import Path
from typing import Any

import pytest

from gateway.core.errors import ConfigError
from gateway.core.settings import ListenerSettings, TlsCertificateSettings, load_settings
from gateway.edge.https import Hsts, RedirectApp
from gateway.edge.tls import CIPHERS_TLS12, TlsListener, load_certificates
from tests.fakes.tls import EMPTY_SAN, Leaf, TestCA


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


def listener(*leaves: Leaf, min_version: str = "1.2") -> ListenerSettings:
    pairs = tuple(TlsCertificateSettings(str(leaf.cert), str(leaf.key)) for leaf in leaves)
    return ListenerSettings("127.0.0.1:0", pairs, min_version)


def test_settings_read_certificates_from_file_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "peel.toml"
    config.write_text('[listeners.public]\ntls_certificates = [{cert = "tls/a.pem", key = "tls/a.key"},'
                      ' {cert = "/etc/b.pem", key = "/etc/b.key"}]\ntls_min_version = "1.3"\n'
                      'hsts_max_age = 600\n[listeners.redirect]\nbind = "0.0.0.0:8080"\n')
    public = load_settings(config, {}).listeners.public
    assert public.bind == "0.0.0.0:8080"  # the section's default bind stays
    assert public.tls_certificates == (
        TlsCertificateSettings(str(tmp_path / "tls/a.pem"), str(tmp_path / "tls/a.key")),
        TlsCertificateSettings("/etc/b.pem", "/etc/b.key"))
    assert (public.tls_min_version, public.hsts_max_age) == ("1.3", 600)
    env = {"PEEL_LISTENERS_ADMIN_TLS_CERTIFICATES": '[{cert = "/a.pem", key = "/a.key"}]',
           "PEEL_LISTENERS_ADMIN_TLS_MIN_VERSION": "1.3"}
    admin = load_settings(None, env).listeners.admin
    assert admin.tls and admin.tls_certificates[0].key == "/a.key" and admin.tls_min_version == "1.3"
    assert admin.bind == "127.0.0.1:9901"


@pytest.mark.parametrize(("text", "env", "key"), [
    ('[listeners.public]\ntls_certificates = [{cert = "a"}, {cert = "b", key = "c"}]', {},
     "listeners.public.tls_certificates[0].key"),
    ('[listeners.public]\ntls_certificates = [{cert = "a", key = "b", pem = "c"}]', {},
     "listeners.public.tls_certificates[0].pem"),
    ('[listeners.public]\ntls_certificates = "a.pem"', {}, "listeners.public.tls_certificates"),
    ('[listeners.public]\ntls_min_version = "1.1"', {}, "listeners.public.tls_min_version"),
    ('[listeners.public]\nhsts_max_age = 60', {}, "listeners.public.hsts_max_age"),
    ('[listeners.admin]\nhsts_max_age = 60\ntls_certificates = [{cert = "a", key = "b"}]', {},
     "listeners.admin.hsts_max_age"),
    ('[listeners.redirect]\nbind = "127.0.0.1:8080"', {}, "listeners.redirect.bind"),
    ("", {"PEEL_LISTENERS_PUBLIC_TLS_CERTIFICATES": "a.pem"}, "listeners.public.tls_certificates"),
])
def test_bad_tls_settings_are_refused_by_name(tmp_path: Path, text: str, env: dict[str, str],
                                              key: str) -> None:
    config = tmp_path / "peel.toml"
    config.write_text(text + "\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, env)
    assert caught.value.key == key


def test_sni_picks_exact_names_then_wildcards_then_the_first(ca: TestCA, tmp_path: Path) -> None:
    shop = ca.issue(tmp_path / "shop", ["shop.example", "www.shop.example"])
    api = ca.issue(tmp_path / "api", ["*.api.example", "api.example"])
    certs = load_certificates(listener(shop, api), "listeners.public")
    shop_ctx, api_ctx = (cert.context for cert in certs.certificates)
    assert certs.certificates[1].names == ("*.api.example", "api.example")
    for name, expected in [("shop.example", shop_ctx), ("WWW.Shop.Example.", shop_ctx),
                           ("api.example", api_ctx), ("v1.api.example", api_ctx),
                           ("a.v1.api.example", shop_ctx), ("other.example", shop_ctx),
                           (None, shop_ctx), ("", shop_ctx)]:
        assert certs.choose(name) is expected, name


def test_contexts_offer_tls12_and_13_with_modern_ciphers_only(ca: TestCA, tmp_path: Path) -> None:
    tls = TlsListener(listener(ca.issue(tmp_path / "a", ["a.example"])), "listeners.public")
    assert tls.context.minimum_version == ssl.TLSVersion.TLSv1_2
    tls12 = {c["name"] for c in tls.context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 and all(name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name)
                         for name in tls12), tls12
    assert CIPHERS_TLS12 == "ECDHE+AESGCM:ECDHE+CHACHA20"
    only13 = TlsListener(listener(ca.issue(tmp_path / "b", ["b.example"]), min_version="1.3"), "k")
    assert only13.context.minimum_version == ssl.TLSVersion.TLSv1_3


def test_bad_files_are_refused_naming_the_setting(ca: TestCA, tmp_path: Path) -> None:
    good = ca.issue(tmp_path / "good", ["good.example"])
    other = ca.issue(tmp_path / "other", ["other.example"])
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not pem at all\n")
    cases = [
        (TlsCertificateSettings(str(good.cert), str(tmp_path / "missing.key")), ".key", "cannot read"),
        (TlsCertificateSettings(str(tmp_path / "missing.pem"), str(good.key)), ".cert", "cannot read"),
        (TlsCertificateSettings(str(garbage), str(good.key)), ".cert", "no PEM certificate"),
        (TlsCertificateSettings(str(good.cert), str(garbage)), ".key", "no PEM private key"),
        (TlsCertificateSettings(str(good.cert), str(other.key)), ".key", "is not the key"),
        (TlsCertificateSettings(str(good.key), str(good.key)), ".cert", "no PEM certificate"),
    ]
    for pair, suffix, words in cases:
        settings = ListenerSettings("127.0.0.1:0", (TlsCertificateSettings(str(good.cert), str(good.key)),
                                                    pair))
        with pytest.raises(ConfigError) as caught:
            TlsListener(settings, "listeners.public")
        assert caught.value.key == f"listeners.public.tls_certificates[1]{suffix}", pair
        assert words in caught.value.message, (pair, caught.value.message)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_key_is_refused(ca: TestCA, tmp_path: Path) -> None:
    leaf = ca.issue(tmp_path / "a", ["a.example"])
    leaf.key.chmod(0)
    with pytest.raises(ConfigError, match=r"tls_certificates\[0\]\.key: cannot read"):
        TlsListener(listener(leaf), "listeners.public")


def test_an_expired_certificate_is_served_with_a_warning(
        ca: TestCA, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    now = datetime.datetime.now(datetime.UTC)
    old = ca.issue(tmp_path / "old", ["old.example"], not_before=now - datetime.timedelta(days=10),
                   not_after=now - datetime.timedelta(days=1))
    with caplog.at_level(logging.WARNING, logger="peel.tls"):
        tls = TlsListener(listener(old), "listeners.public")
    assert tls.certificates.certificates[0].names == ("old.example",)
    assert any("tls_certificates[0].cert" in r.getMessage() and "expired" in r.getMessage()
               for r in caplog.records)


def test_reload_swaps_the_certificates_and_a_bad_one_keeps_the_running(
        ca: TestCA, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = ca.issue(tmp_path / "site", ["one.example"])
    tls = TlsListener(listener(first), "listeners.public")
    context = tls.context
    assert not tls.changed()
    second = ca.issue(tmp_path / "site", ["two.example"])  # same files, new content
    assert tls.changed()
    assert tls.reload()
    assert tls.certificates.certificates[0].names == ("two.example",)
    assert tls.context is context  # the listening socket's context never changes
    assert not tls.changed()
    ca.issue(tmp_path / "stray", ["stray.example"]).key.replace(second.key)  # key of another cert
    assert tls.changed()
    with caplog.at_level(logging.ERROR, logger="peel.tls"):
        assert not tls.reload(why="certificate files changed")
    assert tls.certificates.certificates[0].names == ("two.example",)
    assert any("keeping the running ones" in r.getMessage() and "[0].key" in r.getMessage()
               for r in caplog.records)
    assert not tls.changed()  # the refused files are not retried until they change again


@pytest.mark.parametrize(("port", "host", "target", "location"), [
    (8443, b"Shop.Example.:8080", b"/a/b?c=1", "https://shop.example:8443/a/b?c=1"),
    (443, b"shop.example", b"/", "https://shop.example/"),
    (443, b"[::1]:80", b"/x", "https://[::1]/x"),
    (443, b"ignored", b"http://other.example:8080?q=1", "https://other.example/?q=1"),
    (443, b"shop.example", b"*", "https://shop.example/"),
    (443, b"evil.example:80:90", b"/", None),
    (443, b"", b"/", None),
    (443, None, b"/", None),
])
def test_redirect_location(port: int, host: bytes | None, target: bytes, location: str | None) -> None:
    assert RedirectApp(port).location(host, target) == location


def test_hsts_is_added_unless_the_response_has_its_own() -> None:
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"strict-transport-security", b"max-age=1")] if scope["path"] == "/own" else []
        await send({"type": "http.response.start", "status": 200, "headers": headers})

    async def send(message: Any) -> None:
        sent.append(message)

    wrapped = Hsts(app, 31536000)
    asyncio.run(wrapped({"type": "http", "path": "/"}, None, send))  # type: ignore[arg-type]
    asyncio.run(wrapped({"type": "http", "path": "/own"}, None, send))  # type: ignore[arg-type]
    assert sent[0]["headers"] == [(b"strict-transport-security", b"max-age=31536000")]
    assert sent[1]["headers"] == [(b"strict-transport-security", b"max-age=1")]


def test_a_certificate_whose_names_do_not_parse_is_refused_by_name(ca: TestCA, tmp_path: Path) -> None:
    # A subjectAltName holding no name (an empty SEQUENCE): cryptography 51 refuses to parse it
    # when the names are read; the operator gets the setting and the file, not a traceback.
    leaf = ca.issue(tmp_path / "empty", [], extensions=[EMPTY_SAN])
    with pytest.raises(ConfigError) as caught:
        load_certificates(listener(leaf), "listeners.public")
    assert caught.value.key.startswith("listeners.public.tls_certificates")
    assert str(leaf.cert) in str(caught.value)
