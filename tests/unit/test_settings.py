"""Settings: TOML file, PEEL_* environment overrides, refusals that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.core.errors import ConfigError
from gateway.core.settings import Settings, env_name, load_settings, split_bind


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "peel.toml"
    path.write_text(text)
    return path


def test_defaults_match_the_design() -> None:
    s = load_settings(None, {})
    assert s == Settings()
    assert s.database.url == "sqlite:///./peel.db"
    assert s.listeners.public.bind == "0.0.0.0:8080"
    assert s.listeners.admin.bind == "127.0.0.1:9901"
    assert s.server.workers == 1


def test_file_then_environment(tmp_path: Path) -> None:
    path = write(tmp_path, """
[database]
url = "sqlite:////var/lib/peel/peel.db"
[listeners.public]
bind = "0.0.0.0:80"
[proxy]
trusted_proxies = ["10.0.0.0/8"]
connect_timeout = 2
""")
    s = load_settings(path, {"PEEL_LISTENERS_PUBLIC_BIND": "127.0.0.1:8000",
                             "PEEL_SERVER_WORKERS": "4", "PEEL_ADMIN_TOKEN": "not a setting",
                             "PEEL_NATIVE": "off"})
    assert s.database.url == "sqlite:////var/lib/peel/peel.db"
    assert s.listeners.public.bind == "127.0.0.1:8000"
    assert s.listeners.admin.bind == "127.0.0.1:9901"  # the untouched sibling keeps its default
    assert s.server.workers == 4
    assert s.proxy.trusted_proxies == ("10.0.0.0/8",)
    assert s.proxy.connect_timeout == 2.0


def test_env_name_rule() -> None:
    assert env_name("listeners.public.bind") == "PEEL_LISTENERS_PUBLIC_BIND"
    assert env_name("server.grace_period") == "PEEL_SERVER_GRACE_PERIOD"


@pytest.mark.parametrize(("toml", "env", "key"), [
    ("[server]\nworkerz = 2\n", {}, "server.workerz"),
    ("[nope]\nx = 1\n", {}, "nope"),
    ("[server]\nworkers = 'two'\n", {}, "server.workers"),
    ("[server]\nworkers = 0\n", {}, "server"),
    ("[listeners.public]\nbind = '8080'\n", {}, "listeners.public"),
    ("[proxy]\ntrusted_proxies = ['not-a-net']\n", {}, "proxy"),
    ("", {"PEEL_SERVER_WORKRS": "2"}, "PEEL_SERVER_WORKRS"),
    ("", {"PEEL_SERVER_GRACE_PERIOD": "soon"}, "server.grace_period"),
    ("[database]\nurl = 'peel.db'\n", {}, "database"),
    ("server = 1\n", {}, "server"),
    ("[tracing]\nendpoint = 'collector:4318'\n", {}, "tracing"),
    ("[tracing]\nendpoint = 'http://'\n", {}, "tracing"),
    ("[tracing]\nendpoint = 'http://collector:port/v1/traces'\n", {}, "tracing"),
])
def test_refusals_name_the_key(tmp_path: Path, toml: str, env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, toml), env)
    assert caught.value.key == key


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml", {})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[server\n"), {})


def test_split_bind() -> None:
    assert split_bind("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert split_bind("[::1]:9901") == ("::1", 9901)
    for bad in ("8080", ":80", "host:", "host:99999"):
        with pytest.raises(ValueError):
            split_bind(bad)


def test_workers_auto_is_one_per_core_this_process_may_use(tmp_path: Path) -> None:
    import os

    from gateway.cli.args import worker_count
    from gateway.core.settings import available_cores

    cores = len(os.sched_getaffinity(0))
    assert available_cores() == cores
    assert load_settings(write(tmp_path, '[server]\nworkers = "auto"\n'), environ={}).server.workers == cores
    assert load_settings(None, environ={"PEEL_SERVER_WORKERS": "auto"}).server.workers == cores
    assert load_settings(None, environ={"PEEL_SERVER_WORKERS": "3"}).server.workers == 3
    assert worker_count("auto") == cores and worker_count("2") == 2
    with pytest.raises(ConfigError, match=r"server\.workers.*whole number or 'auto'"):
        load_settings(write(tmp_path, '[server]\nworkers = "many"\n'), environ={})
    with pytest.raises(ConfigError, match=r"server\.workers"):
        load_settings(None, environ={"PEEL_SERVER_WORKERS": "many"})
