"""Settings of the east-west listeners (issue 14): the role, the outbound listener, a sidecar's app."""

from __future__ import annotations

import pytest

from gateway.core.errors import ConfigError
from gateway.core.settings import load_settings


def test_defaults_gateway_role_outbound_off_sidecar_on() -> None:
    gateway = load_settings(None, {})
    assert gateway.server.role == "gateway"
    assert gateway.listeners.outbound.bind == "127.0.0.1:15001"
    assert not gateway.outbound_enabled
    assert load_settings(None, {"PEEL_SERVER_ROLE": "sidecar"}).outbound_enabled
    assert load_settings(None, {"PEEL_LISTENERS_OUTBOUND_ENABLED": "true"}).outbound_enabled
    assert not load_settings(None, {"PEEL_SERVER_ROLE": "sidecar",
                                    "PEEL_LISTENERS_OUTBOUND_ENABLED": "off"}).outbound_enabled


def test_service_ports_and_connect_allow_from_file_and_environment(tmp_path: object) -> None:
    from pathlib import Path

    config = Path(str(tmp_path)) / "peel.toml"
    config.write_text('[listeners.outbound]\nenabled = true\nservice_ports = {orders = 15101}\n'
                      'connect_allow = ["api.github.com:443", "*.example.com:443"]\n')
    settings = load_settings(config, {})
    assert dict(settings.listeners.outbound.service_ports) == {"orders": 15101}
    assert settings.listeners.outbound.connect_allow == ("api.github.com:443", "*.example.com:443")
    env = load_settings(None, {"PEEL_LISTENERS_OUTBOUND_SERVICE_PORTS": "{orders = 15101, payments = 15102}"})
    assert dict(env.listeners.outbound.service_ports) == {"orders": 15101, "payments": 15102}


@pytest.mark.parametrize(("environ", "key", "words"), [
    ({"PEEL_SERVER_ROLE": "sidecar", "PEEL_LISTENERS_OUTBOUND_BIND": "0.0.0.0:15001"},
     "listeners.outbound.bind", "allow_non_loopback"),
    ({"PEEL_LISTENERS_OUTBOUND_ENABLED": "true", "PEEL_LISTENERS_OUTBOUND_BIND": "10.0.0.1:15001"},
     "listeners.outbound.bind", "beyond loopback"),
    ({"PEEL_SERVER_ROLE": "proxy"}, "server.role", "gateway, sidecar"),
    ({"PEEL_SERVER_ROLE": "sidecar", "PEEL_LISTENERS_INBOUND_MTLS": "strict"},
     "listeners.inbound.app", "local app"),
    ({"PEEL_LISTENERS_INBOUND_APP": "http://127.0.0.1:9000", "PEEL_LISTENERS_INBOUND_MTLS": "strict"},
     "listeners.inbound.app", "sidecar role"),
    ({"PEEL_SERVER_ROLE": "sidecar", "PEEL_LISTENERS_INBOUND_MTLS": "strict",
      "PEEL_LISTENERS_INBOUND_APP": "https://127.0.0.1:9000"}, "listeners.inbound.app", "http://host:port"),
    ({"PEEL_LISTENERS_OUTBOUND_SERVICE_PORTS": "{Orders = 15101}"},
     "listeners.outbound.service_ports.Orders", "service name"),
    ({"PEEL_LISTENERS_OUTBOUND_SERVICE_PORTS": "{orders = 15001}"},
     "listeners.outbound.service_ports.orders", "own"),
    ({"PEEL_LISTENERS_OUTBOUND_SERVICE_PORTS": "{a = 15101, b = 15101}"},
     "listeners.outbound.service_ports.b", "also service a"),
    ({"PEEL_LISTENERS_OUTBOUND_CONNECT_ALLOW": "evil"}, "listeners.outbound.connect_allow", "host:port"),
    ({"PEEL_LISTENERS_PUBLIC_APP": "http://127.0.0.1:1"}, "listeners.public.app", "inbound"),
    ({"PEEL_SERVER_ROLE": "sidecar", "PEEL_SERVER_WORKERS": "2"}, "listeners.outbound.enabled", "workers"),
])
def test_refusals_name_the_key(environ: dict[str, str], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ)
    assert str(caught.value).startswith(key + ":")
    assert words in str(caught.value)


def test_allowed_non_loopback_bind_and_sidecar_with_app() -> None:
    settings = load_settings(None, {"PEEL_SERVER_ROLE": "sidecar",
                                    "PEEL_LISTENERS_OUTBOUND_BIND": "10.0.0.1:15001",
                                    "PEEL_LISTENERS_OUTBOUND_ALLOW_NON_LOOPBACK": "true",
                                    "PEEL_LISTENERS_INBOUND_MTLS": "strict",
                                    "PEEL_LISTENERS_INBOUND_APP": "http://127.0.0.1:9000"})
    assert settings.listeners.inbound.app == "http://127.0.0.1:9000"
