"""`peel doctor proxy-env` for real: the probe proxy on a local port, the clients of this machine as
child processes, and fake clients (bash scripts) whose behaviour is known, to prove the probe tells
a client that honours only `http_proxy` from one that honours both cases and `NO_PROXY`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.cli.proxyprobe import Client, probe

ROOT = Path(__file__).resolve().parents[2]

# Sends an absolute-form request to $http_proxy (lower case only) with bash's /dev/tcp; reads no
# other variable, so it never bypasses the proxy.
LOWER_ONLY = r"""
[ -n "$http_proxy" ] || exit 6
hostport=${http_proxy#http://}; hostport=${hostport%/}
exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}" || exit 7
printf 'GET %s HTTP/1.0\r\nHost: x\r\n\r\n' "$1" >&3
cat <&3 >/dev/null
"""
# Either case of the proxy variable; bypasses hosts ending in an entry of NO_PROXY (upper case only).
BOTH_CASES_UPPER_NO_PROXY = r"""
proxy=${http_proxy:-$HTTP_PROXY}
[ -n "$proxy" ] || exit 6
host=${1#http://}; host=${host%%/*}; host=${host%:*}
IFS=, read -ra skip <<< "$NO_PROXY"
for s in "${skip[@]}"; do [[ -n "$s" && "$host" == *"$s" ]] && exit 6; done
hostport=${proxy#http://}; hostport=${hostport%/}
exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}" || exit 7
printf 'GET %s HTTP/1.0\r\nHost: x\r\n\r\n' "$1" >&3
cat <&3 >/dev/null
"""


def fake(tmp_path: Path, name: str, script: str) -> Client:
    path = tmp_path / f"{name}.sh"
    path.write_text(script)
    return Client(name, "0", ("/bin/bash", str(path)))


@pytest.mark.skipif(not Path("/bin/bash").exists(), reason="the fake clients are bash scripts")
def test_probe_tells_fake_clients_apart(tmp_path: Path) -> None:
    lower, both = probe([fake(tmp_path, "lower-only", LOWER_ONLY),
                         fake(tmp_path, "both-cases", BOTH_CASES_UPPER_NO_PROXY)])
    assert dict(lower.verdicts) == {"http_proxy": "yes", "HTTP_PROXY": "no", "no_proxy": "no",
                                    "NO_PROXY": "no", "cidr": "no"}
    assert dict(both.verdicts) == {"http_proxy": "yes", "HTTP_PROXY": "yes", "no_proxy": "no",
                                   "NO_PROXY": "yes", "cidr": "no"}


@pytest.fixture(scope="module")
def measured() -> dict[str, Any]:
    """`peel doctor proxy-env --json` run once, as an operator would, for its verdicts by client."""
    python = shutil.which("python3") or sys.executable
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "doctor", "proxy-env", "--json",
                           "--python", python, "--proxy", "http://127.0.0.1:15009"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    assert answer["set"]["environment"]["HTTP_PROXY"] == "http://127.0.0.1:15009"
    return {c["client"]: c for c in answer["clients"]}


def present(measured: dict[str, Any], name: str) -> dict[str, str]:
    row = measured[name]
    if row["note"]:
        pytest.skip(f"{name}: {row['note']}")
    verdicts: dict[str, str] = row["verdicts"]
    return verdicts


def test_curl_reads_lower_case_only(measured: dict[str, Any]) -> None:
    # curl ignores upper-case HTTP_PROXY for http:// (httpoxy; its man page, ENVIRONMENT)
    v = present(measured, "curl")
    assert (v["http_proxy"], v["HTTP_PROXY"]) == ("yes", "no")
    assert v["no_proxy"] == v["NO_PROXY"] == "yes"


def test_python_urllib_reads_both_cases(measured: dict[str, Any]) -> None:
    v = present(measured, "python urllib")
    assert (v["http_proxy"], v["HTTP_PROXY"], v["no_proxy"], v["NO_PROXY"]) == ("yes", "yes", "yes", "yes")
    # urllib.request.proxy_bypass_environment matches names and suffixes, not CIDR blocks
    assert v["cidr"] == "no"


def test_java_ignores_the_variables_but_honours_the_flags(measured: dict[str, Any]) -> None:
    v = present(measured, "java HttpURLConnection")
    assert v == {"http_proxy": "no", "HTTP_PROXY": "no", "jvm_flags": "yes", "jvm_non_proxy_hosts": "yes"}


def test_every_client_here_has_a_row(measured: dict[str, Any]) -> None:
    for tool, row in (("curl", "curl"), ("node", "node fetch"), ("java", "java HttpURLConnection")):
        if shutil.which(tool) and (tool != "java" or shutil.which("javac")):
            assert measured[row]["version"] and not measured[row]["note"], row
