"""`peel token create/list` with scopes and expiry (in-process, SQLite in a temp dir); `--reason`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.cli.local import duration
from routes.store import Store


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    for name in ("PEEL_CONFIG", "PEEL_ADMIN_URL", "PEEL_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    url = f"sqlite:///{tmp_path / 'peel.db'}"
    monkeypatch.setenv("PEEL_DATABASE_URL", url)
    s = Store(url)
    s.upgrade()
    return s


def test_create_without_options_gives_every_scope_and_no_expiry(store: Store,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "create", "ops"]) == 0
    grant = store.grant(capsys.readouterr().out.strip())
    assert grant is not None and grant.scopes == {"metrics", "read", "write"}
    assert grant.expires_at is None


def test_create_with_a_scope_and_an_expiry_and_list_them(store: Store,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "create", "prom", "--scope", "metrics", "--expires", "30d"]) == 0
    grant = store.grant(capsys.readouterr().out.strip())
    assert grant is not None and grant.scopes == {"metrics"}
    assert grant.expires_at is not None
    assert abs(grant.expires_at - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=1)
    assert main(["token", "list"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["NAME", "SCOPES", "CREATED", "EXPIRES", "LAST", "USED", "STATUS"]
    assert row.split()[:2] == ["prom", "metrics"]
    assert f"{grant.expires_at:%Y-%m-%d}" in row and row.split()[-1] == "active"
    assert main(["--json", "token", "list"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["scopes"] == ["metrics"] and listed["expires_at"] is not None
    assert listed["last_used_at"] is not None  # the grant above was a use


def test_an_unknown_scope_or_a_bad_duration_is_a_usage_error(store: Store) -> None:
    for argv in (["token", "create", "x", "--scope", "admin"], ["token", "create", "x", "--expires", "0d"],
                 ["token", "create", "x", "--expires", "30"], ["token", "create", "x", "--expires", "1y"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2, argv
    assert store.list_tokens() == []


@pytest.mark.parametrize(("text", "delta"), [("90m", timedelta(minutes=90)), ("12h", timedelta(hours=12)),
                                             ("30d", timedelta(days=30)), ("2w", timedelta(weeks=2))])
def test_duration(text: str, delta: timedelta) -> None:
    assert duration(text) == delta


def test_a_reason_with_control_characters_is_a_usage_error_before_any_request(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["config", "rollback", "1", "--reason", "ok\n  9  2026-01-01 00:00  root  forged"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--reason" in err and "control characters" in err and "U+000A" in err
