"""Beta header trust: trusted networks, signed values, forgeries and expiry."""

from __future__ import annotations

import pytest

from facade.beta import BetaTrust, sign, verify

SECRET = "s" * 32


def test_signed_value_names_its_user_until_expiry() -> None:
    value = sign(SECRET, "alice", 2_000)
    assert value.startswith("v1.alice.2000.")
    assert verify(SECRET.encode(), value, 1_999) == "alice"
    assert verify(SECRET.encode(), value, 2_000) is None


def test_user_ids_with_dots_sign_and_verify() -> None:
    assert verify(SECRET.encode(), sign(SECRET, "a.b@example.com", 10), 0) == "a.b@example.com"


@pytest.mark.parametrize("tamper", [
    lambda v: v.replace("alice", "mallory"),
    lambda v: v.replace(".2000.", ".9000."),
    lambda v: v[:-2] + ("AA" if not v.endswith("AA") else "BB"),
    lambda v: "v2" + v[2:],
    lambda v: "alice",
])
def test_forged_values_are_refused(tamper: object) -> None:
    value = sign(SECRET, "alice", 2_000)
    assert callable(tamper)
    assert verify(SECRET.encode(), tamper(value), 0) is None
    assert verify(b"t" * 32, value, 0) is None


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="32"):
        sign("short", "alice", 1)


def test_trust_by_network_or_signature() -> None:
    trust = BetaTrust(["10.0.0.0/8", "::1/128"], SECRET)
    assert trust.user("alice", "10.1.2.3", 0) == "alice"
    assert trust.user("alice", "::1", 0) == "alice"
    assert trust.user("alice", "192.168.0.1", 0) is None
    assert trust.user("alice", None, 0) is None
    assert trust.user(sign(SECRET, "carol", 100), "192.168.0.1", 0) == "carol"
    assert BetaTrust().user("alice", "127.0.0.1", 0) is None


def test_peel_beta_sign_prints_a_value_that_verifies(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import time

    from gateway.cli import main

    monkeypatch.setenv("PEEL_FACADE_BETA_SECRET", SECRET)
    assert main(["beta", "sign", "alice", "--ttl", "1h"]) == 0
    value = capsys.readouterr().out.strip()
    assert verify(SECRET.encode(), value, time.time()) == "alice"
    assert verify(SECRET.encode(), value, time.time() + 3601) is None
    monkeypatch.delenv("PEEL_FACADE_BETA_SECRET")
    assert main(["beta", "sign", "alice"]) == 1
    assert "facade.beta_secret" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["beta", "sign", "alice", "--ttl", "soon"])
    assert usage.value.code == 2
