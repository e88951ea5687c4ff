"""`peel doctor proxy-env`: its arguments, the settings it prints and the verdicts from what reached
the probe (pure functions; the real probe runs in tests/sockets/test_doctor_proxy_env.py)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest

from gateway.cli import build_parser, main
from gateway.cli.doctor import (
    DEFAULT_PROXY,
    jvm_non_proxy_hosts,
    no_proxy_arg,
    outbound_proxy,
    print_report,
    proxy_url_arg,
    report,
    settings_to_set,
    shell_lines,
    systemd_dropin,
    warnings,
)
from gateway.cli.proxyprobe import ENV_CASES, JVM_CASES, Client, Result, base_env, discover, verdicts
from gateway.core.errors import ConfigError


@pytest.mark.parametrize(("text", "url"), [
    ("http://127.0.0.1:15001", "http://127.0.0.1:15001"),
    ("http://127.0.0.1:15001/", "http://127.0.0.1:15001"),
    ("http://[::1]:15001", "http://[::1]:15001"),
    ("http://sidecar.local:3128", "http://sidecar.local:3128"),
])
def test_proxy_url_accepted(text: str, url: str) -> None:
    assert proxy_url_arg(text) == url


@pytest.mark.parametrize("text", ["https://127.0.0.1:15001", "127.0.0.1:15001", "http://127.0.0.1",
                                  "http://127.0.0.1:99999", "http://u:p@127.0.0.1:1", "http://h:1/path",
                                  "socks5://h:1"])
def test_proxy_url_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        proxy_url_arg(text)


def test_no_proxy_list_is_split_and_stripped() -> None:
    assert no_proxy_arg(" localhost, .internal,,10.0.0.0/8 ") == ("localhost", ".internal", "10.0.0.0/8")
    with pytest.raises(argparse.ArgumentTypeError):
        no_proxy_arg("localhost,a b")
    with pytest.raises(argparse.ArgumentTypeError):
        no_proxy_arg("a|b")


def test_bad_arguments_are_usage_errors() -> None:
    for argv in (["doctor", "proxy-env", "--proxy", "https://x:1"],
                 ["doctor", "proxy-env", "--no-proxy", "a|b"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2


def test_command_is_registered_with_its_options() -> None:
    args = build_parser().parse_args(["doctor", "proxy-env", "--json", "--python", "/x/python"])
    assert args.json and args.python == "/x/python" and args.proxy is None
    assert args.no_proxy == ("localhost", "127.0.0.1", "::1")


def test_jvm_non_proxy_hosts_translates_what_it_can() -> None:
    hosts, skipped = jvm_non_proxy_hosts(["localhost", ".internal", "*.corp", "10.0.0.0/8", "192.168.1.0/24",
                                          "172.20.0.0/16", "10.1.2.3/32", "172.16.0.0/12", "::1", "fd00::/8"])
    assert hosts == "localhost|*.internal|*.corp|10.*|192.168.1.*|172.20.*|10.1.2.3|[::1]"
    assert skipped == ["172.16.0.0/12", "fd00::/8"]


def test_outbound_proxy_from_the_settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PEEL_LISTENERS_OUTBOUND_BIND", raising=False)
    assert outbound_proxy(None) == DEFAULT_PROXY
    settings = tmp_path / "peel.toml"
    settings.write_text("[listeners.public]\nbind = '0.0.0.0:8080'\n")
    assert outbound_proxy(str(settings)) == DEFAULT_PROXY
    settings.write_text("listeners = 'x'\n")
    assert outbound_proxy(str(settings)) == DEFAULT_PROXY
    settings.write_text("[listeners.outbound]\nbind = '0.0.0.0:15002'\n")
    assert outbound_proxy(str(settings)) == "http://127.0.0.1:15002"
    settings.write_text("[listeners.outbound]\nbind = '[::1]:15003'\n")
    assert outbound_proxy(str(settings)) == "http://[::1]:15003"
    settings.write_text("[listeners.outbound]\nbind = '15001'\n")
    with pytest.raises(ConfigError, match="outbound"):
        outbound_proxy(str(settings))
    settings.write_text("[listeners\n")
    with pytest.raises(ConfigError, match="cannot read"):
        outbound_proxy(str(settings))


def test_outbound_proxy_from_the_environment_before_the_file(tmp_path: Path) -> None:
    # as `peel serve` reads it: PEEL_LISTENERS_OUTBOUND_BIND (a systemd Environment= line) wins
    settings = tmp_path / "peel.toml"
    settings.write_text("[listeners.outbound]\nbind = '127.0.0.1:15002'\n")
    env = {"PEEL_LISTENERS_OUTBOUND_BIND": "0.0.0.0:15009"}
    assert outbound_proxy(str(settings), env) == "http://127.0.0.1:15009"
    assert outbound_proxy(None, env) == "http://127.0.0.1:15009"
    assert outbound_proxy(str(settings), {}) == "http://127.0.0.1:15002"
    with pytest.raises(ConfigError, match="PEEL_LISTENERS_OUTBOUND_BIND"):
        outbound_proxy(None, {"PEEL_LISTENERS_OUTBOUND_BIND": "15001"})


def test_unreadable_settings_file_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "peel.toml"
    bad.write_text("[listeners\n")
    assert main(["doctor", "proxy-env", "--config", str(bad)]) == 1
    assert "cannot read the settings file" in capsys.readouterr().err


def test_shell_lines_set_both_cases_and_survive_the_shell() -> None:
    values = settings_to_set("http://127.0.0.1:15001", ["localhost", ".internal"])
    lines = shell_lines(values)
    assert lines[0] == "export http_proxy=http://127.0.0.1:15001 HTTP_PROXY=http://127.0.0.1:15001"
    assert lines[1] == "export no_proxy=localhost,.internal NO_PROXY=localhost,.internal"
    # the `|` of nonProxyHosts would be a pipe unquoted: the line must parse back to one assignment
    words = shlex.split(lines[2])
    assert words == ["export", "JAVA_TOOL_OPTIONS=-Dhttp.proxyHost=127.0.0.1 -Dhttp.proxyPort=15001 "
                     "-Dhttp.nonProxyHosts=localhost|*.internal"]


def test_empty_no_proxy_list_sets_no_bypass_variables() -> None:
    values = settings_to_set("http://127.0.0.1:15001", [])
    assert "no_proxy" not in values and "NO_PROXY" not in values
    assert values["JAVA_TOOL_OPTIONS"] == "-Dhttp.proxyHost=127.0.0.1 -Dhttp.proxyPort=15001"


def test_systemd_dropin_doubles_percent() -> None:
    text = systemd_dropin({"http_proxy": "http://127.0.0.1:15001", "no_proxy": "a%b"})
    assert "[Service]" in text
    assert 'Environment="http_proxy=http://127.0.0.1:15001"' in text
    assert 'Environment="no_proxy=a%%b"' in text


@pytest.mark.parametrize(("reached", "expected"), [
    # honours lower case only, ignores no_proxy entirely
    ({"http_proxy": True, "HTTP_PROXY": False, "no_proxy": True, "NO_PROXY": True, "cidr": True},
     {"http_proxy": "yes", "HTTP_PROXY": "no", "no_proxy": "no", "NO_PROXY": "no", "cidr": "no"}),
    # both cases, names but no CIDR
    ({"http_proxy": True, "HTTP_PROXY": True, "no_proxy": False, "NO_PROXY": False, "cidr": True},
     {"http_proxy": "yes", "HTTP_PROXY": "yes", "no_proxy": "yes", "NO_PROXY": "yes", "cidr": "no"}),
    # no proxy at all: the bypass cases cannot be judged
    ({"http_proxy": False, "HTTP_PROXY": False, "no_proxy": False, "NO_PROXY": False, "cidr": False},
     {"http_proxy": "no", "HTTP_PROXY": "no", "no_proxy": "n/a", "NO_PROXY": "n/a", "cidr": "n/a"}),
])
def test_env_verdicts(reached: dict[str, bool], expected: dict[str, str]) -> None:
    assert verdicts(ENV_CASES, reached) == expected


def test_jvm_verdicts() -> None:
    assert verdicts(JVM_CASES, {"http_proxy": False, "HTTP_PROXY": False, "jvm_flags": True,
                                "jvm_non_proxy_hosts": False}) == {
        "http_proxy": "no", "HTTP_PROXY": "no", "jvm_flags": "yes", "jvm_non_proxy_hosts": "yes"}
    assert verdicts(JVM_CASES, {"http_proxy": False, "HTTP_PROXY": False, "jvm_flags": False,
                                "jvm_non_proxy_hosts": False})["jvm_non_proxy_hosts"] == "n/a"


def _result(name: str, **v: str) -> Result:
    return Result(Client(name, "1", ("/bin/true",)), {case: v.get(case, "yes") for case in ENV_CASES})


def _java(non_proxy_hosts: str) -> Result:
    return Result(Client("java", "17", ("java",), jvm=True), {
        "http_proxy": "no", "HTTP_PROXY": "no", "jvm_flags": "yes", "jvm_non_proxy_hosts": non_proxy_hosts})


def test_warnings_follow_the_measurements() -> None:
    results = [_result("lower-only", HTTP_PROXY="no"), _result("deaf", http_proxy="no", HTTP_PROXY="no"),
               _result("no-cidr", cidr="no"), _result("fine"),
               _java("yes"),
               Result(Client("absent", note="not found"), {})]
    notes = warnings(results, ["localhost", "10.0.0.0/12"])
    assert "lower-only reads only http_proxy: set both cases" in notes
    assert any(n.startswith("deaf ignores both") for n in notes)
    assert any(n.startswith("no-cidr does not honour CIDR") for n in notes)
    assert any(n.startswith("java ignores the variables") for n in notes)
    assert any("cannot express 10.0.0.0/12" in n for n in notes)
    assert not any(n.startswith(("fine", "absent")) for n in notes)
    # without a CIDR entry in the operator's list, a client without CIDR support is no problem
    assert not any("CIDR" in n for n in warnings(results, ["localhost"]))


def test_discover_reports_absent_clients(tmp_path: Path) -> None:
    clients = discover("python3", tmp_path, which=lambda name: None)
    assert [c.name for c in clients] == ["curl", "wget", "python urllib", "python requests", "node",
                                         "java HttpURLConnection"]
    assert all(not c.argv and c.note for c in clients)


def test_child_environment_drops_every_steering_variable() -> None:
    env = base_env({"PATH": "/bin", "HTTPS_PROXY": "x", "no_proxy": "y", "All_Proxy": "z",
                    "JAVA_TOOL_OPTIONS": "-Dx", "NODE_USE_ENV_PROXY": "1", "HOME": "/root"})
    assert env == {"PATH": "/bin", "HOME": "/root"}


def test_text_report_shows_table_jvm_line_and_settings(capsys: pytest.CaptureFixture[str]) -> None:
    results = [_result("lower-only", HTTP_PROXY="no"),
               _java("no"),
               Result(Client("node", note="not found"), {})]
    print_report(results, report(results, "http://127.0.0.1:15001", ["localhost"]))
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line[:1].isalpha()}
    assert rows["CLIENT"][:3] == ["CLIENT", "VERSION", "http_proxy"]
    assert rows["lower-only"][1:4] == ["1", "yes", "no"]
    assert rows["node"][1:4] == ["-", "not", "found"]
    assert ("-Dhttp.proxyHost/-Dhttp.proxyPort honoured: yes; -Dhttp.nonProxyHosts (*.internal) "
            "honoured: no") in out
    assert "export http_proxy=http://127.0.0.1:15001 HTTP_PROXY=http://127.0.0.1:15001" in out
    assert "export no_proxy=localhost NO_PROXY=localhost" in out
    assert 'Environment="JAVA_TOOL_OPTIONS=-Dhttp.proxyHost=127.0.0.1 -Dhttp.proxyPort=15001 ' \
           '-Dhttp.nonProxyHosts=localhost"' in out
    assert "! lower-only reads only http_proxy: set both cases" in out
