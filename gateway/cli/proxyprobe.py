"""The measurement behind `peel doctor proxy-env`: which HTTP clients on this machine send a request
through the proxy that the proxy variables name, and which bypass it for the `NO_PROXY` entries.

Nothing here trusts folklore. A probe proxy listens on 127.0.0.1 (a free port), records every
absolute-form request (`GET http://host/path`, what a client sends to a forward proxy) and answers
200. Each client runs as a child process with only the variables of one case set, against a URL
that cannot be reached directly (`peel-doctor.invalid`, RFC 6761; `peel-doctor.internal`; a closed
port on 127.0.0.2), with the client and case in the path. A case's request either shows up at the
probe (the client used the proxy) or it does not (the client went direct and failed).

Cases, per client that reads the environment:
  `http_proxy` / `HTTP_PROXY`  only that variable set: did the request reach the probe?
  `no_proxy` / `NO_PROXY`      both proxy variables set and only that one of the two
                               `localhost,127.0.0.1,.internal`; URL `http://peel-doctor.internal/`:
                               did the request stay off the probe (the `.internal` suffix honoured)?
  `cidr`                       both no-proxy variables `127.0.0.0/8`; URL `http://127.0.0.2:<closed>/`
A no-proxy case means something only when one of the proxy variables is honoured; otherwise "n/a".
The JVM reads no variable: its row runs the same two proxy cases, then `-Dhttp.proxyHost` and
`-Dhttp.nonProxyHosts` through `JAVA_TOOL_OPTIONS`, with a ten-line `HttpURLConnection` program
compiled by `javac` into a temporary directory.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from routes.errors import PeelError

UNREACHABLE = "peel-doctor.invalid"
SUFFIX_HOST = "peel-doctor.internal"
TEST_NO_PROXY = "localhost,127.0.0.1,.internal"
TEST_CIDR = "127.0.0.0/8"
JVM_NON_PROXY = "localhost|127.0.0.1|*.internal"
ENV_CASES = ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY", "cidr")
JVM_CASES = ("http_proxy", "HTTP_PROXY", "jvm_flags", "jvm_non_proxy_hosts")
# Every variable that could steer a child client; the child starts with none of them.
STEERING = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy", "NODE_USE_ENV_PROXY",
            "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "REQUEST_METHOD", "CURL_HOME",
            "WGETRC")
CLIENT_TIMEOUT = 20.0

JAVA_SOURCE = """\
import java.io.InputStream;
import java.net.HttpURLConnection;
import java.net.URL;

public class PeelProxyProbe {
    public static void main(String[] args) throws Exception {
        HttpURLConnection c = (HttpURLConnection) new URL(args[0]).openConnection();
        c.setConnectTimeout(5000);
        c.setReadTimeout(5000);
        try (InputStream in = c.getInputStream()) { in.readAllBytes(); }
    }
}
"""
NODE_HTTP = ("require('http').get(process.argv[1], r => { r.resume(); r.on('end', () => process.exit(0)); })"
             ".on('error', () => process.exit(1))")
NODE_FETCH = "fetch(process.argv[1]).then(r => r.text()).then(() => process.exit(0), () => process.exit(1))"
PY_URLLIB = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5).read()"
PY_REQUESTS = "import sys, requests; requests.get(sys.argv[1], timeout=5)"


class ProbeError(PeelError):
    """The probe could not run at all (no local port, no temporary directory)."""


@dataclass(frozen=True, slots=True)
class Client:
    """One HTTP client as found on this machine: `argv` + the URL runs one request.

    `argv` is empty when the client is absent or unusable; `note` then says why.
    """

    name: str
    version: str = ""
    argv: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    jvm: bool = False
    note: str = ""


@dataclass(frozen=True, slots=True)
class Result:
    """A client's verdict per case: "yes" (honoured), "no", "n/a" or "not found"."""

    client: Client
    verdicts: Mapping[str, str]


class _Recorder(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("http://"):
            self.server.seen.add(self.path)  # type: ignore[attr-defined]
        body = b"peel doctor probe\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class ProbeProxy:
    """A forward proxy that only records: `seen(marker)` tells whether a request with `marker` in
    its absolute-form target arrived."""

    def __init__(self) -> None:
        try:
            self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
        except OSError as exc:
            raise ProbeError(f"cannot listen on 127.0.0.1 for the probe proxy: {exc}") from exc
        self._server.daemon_threads = True
        self._server.seen = set()  # type: ignore[attr-defined]
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="peel-doctor-probe",
                                        daemon=True)

    def seen(self, marker: str) -> bool:
        return any(target.endswith(marker) for target in list(self._server.seen))  # type: ignore[attr-defined]

    def __enter__(self) -> ProbeProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.2 that refuses connections (bound, not listening) while the block runs."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.2", 0))
        except OSError as exc:
            raise ProbeError(f"cannot bind 127.0.0.2 for the CIDR case: {exc}") from exc
        yield s.getsockname()[1]


def _output(argv: Sequence[str]) -> str | None:
    """stdout + stderr of a short version command, or None when it cannot run or fails."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=CLIENT_TIMEOUT, check=False,
                              env=base_env())
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout + done.stderr if done.returncode == 0 else None


def _first(pattern: str, text: str | None) -> str:
    found = re.search(pattern, text or "")
    return found.group(1) if found else "?"


def discover(python: str, workdir: Path, which: Callable[[str], str | None] = shutil.which) -> list[Client]:
    """The clients to probe, in table order; absent ones carry a note instead of an `argv`.

    `python` is the interpreter whose urllib and requests are probed (an app's venv, say).
    `workdir` receives the compiled Java probe.
    """
    clients: list[Client] = []
    if curl := which("curl"):
        clients.append(Client("curl", _first(r"curl (\S+)", _output([curl, "--version"])),
                              (curl, "-q", "-sS", "-o", "/dev/null", "--max-time", "5")))
    else:
        clients.append(Client("curl", note="not found"))
    if wget := which("wget"):
        clients.append(Client("wget", _first(r"Wget (\S+)", _output([wget, "--version"])),
                              (wget, "--no-config", "-q", "-O", "/dev/null", "--timeout=5", "--tries=1")))
    else:
        clients.append(Client("wget", note="not found"))
    py = which(python)
    py_version = _output([py, "--version"]) if py else None
    if py and py_version is not None:
        clients.append(Client("python urllib", _first(r"Python (\S+)", py_version), (py, "-c", PY_URLLIB)))
        requests_version = _output([py, "-c", "import requests; print(requests.__version__)"])
        clients.append(Client("python requests", requests_version.strip(), (py, "-c", PY_REQUESTS))
                       if requests_version is not None else
                       Client("python requests", note=f"not importable by {py}"))
    else:
        clients += [Client("python urllib", note=f"{python}: not found"),
                    Client("python requests", note=f"{python}: not found")]
    if node := which("node"):
        version = _first(r"v(\S+)", _output([node, "--version"]))
        clients += [Client("node http.get", version, (node, "-e", NODE_HTTP)),
                    Client("node fetch", version, (node, "-e", NODE_FETCH)),
                    Client("node http.get, NODE_USE_ENV_PROXY=1", version, (node, "-e", NODE_HTTP),
                           {"NODE_USE_ENV_PROXY": "1"})]
    else:
        clients.append(Client("node", note="not found"))
    clients.append(_java(workdir, which))
    return clients


def _java(workdir: Path, which: Callable[[str], str | None]) -> Client:
    java, javac = which("java"), which("javac")
    if not java or not javac:
        return Client("java HttpURLConnection", note="not found" if not java else "javac not found")
    version = _first(r'version "([^"]+)"', _output([java, "-version"]))
    (workdir / "PeelProxyProbe.java").write_text(JAVA_SOURCE)
    if _output([javac, "-d", str(workdir), str(workdir / "PeelProxyProbe.java")]) is None:
        return Client("java HttpURLConnection", version, note="javac could not compile the probe")
    return Client("java HttpURLConnection", version, (java, "-cp", str(workdir), "PeelProxyProbe"),
                  jvm=True)


def base_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The parent's environment without any variable that steers a client (either case)."""
    steering = {name.lower() for name in STEERING}
    return {k: v for k, v in (os.environ if environ is None else environ).items()
            if k.lower() not in steering}


def plan(client: Client, case: str, proxy: ProbeProxy, dead_port: int) -> tuple[dict[str, str], str]:
    """The variables to set and the URL to fetch for one case."""
    marker = f"/{re.sub(r'[^a-z0-9]+', '-', client.name.lower())}/{case}"
    both = {"http_proxy": proxy.url, "HTTP_PROXY": proxy.url}
    flags = f"-Dhttp.proxyHost=127.0.0.1 -Dhttp.proxyPort={proxy.port}"
    cases: dict[str, tuple[dict[str, str], str]] = {
        "http_proxy": ({"http_proxy": proxy.url}, f"http://{UNREACHABLE}{marker}"),
        "HTTP_PROXY": ({"HTTP_PROXY": proxy.url}, f"http://{UNREACHABLE}{marker}"),
        "no_proxy": ({**both, "no_proxy": TEST_NO_PROXY}, f"http://{SUFFIX_HOST}{marker}"),
        "NO_PROXY": ({**both, "NO_PROXY": TEST_NO_PROXY}, f"http://{SUFFIX_HOST}{marker}"),
        "cidr": ({**both, "no_proxy": TEST_CIDR, "NO_PROXY": TEST_CIDR},
                 f"http://127.0.0.2:{dead_port}{marker}"),
        "jvm_flags": ({"JAVA_TOOL_OPTIONS": flags}, f"http://{UNREACHABLE}{marker}"),
        "jvm_non_proxy_hosts": ({"JAVA_TOOL_OPTIONS": f"{flags} -Dhttp.nonProxyHosts={JVM_NON_PROXY}"},
                                f"http://{SUFFIX_HOST}{marker}"),
    }
    env, url = cases[case]
    return {**client.env, **env}, url


def _run(client: Client, case: str, proxy: ProbeProxy, dead_port: int) -> bool:
    """Whether this case's request reached the probe proxy."""
    env, url = plan(client, case, proxy, dead_port)
    try:
        subprocess.run([*client.argv, url], env={**base_env(), **env}, capture_output=True,
                       timeout=CLIENT_TIMEOUT, check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pass  # a hung client may still have reached the probe: the record decides
    except OSError:
        return False
    return proxy.seen("/" + url.split("/", 3)[3])


def verdicts(cases: Sequence[str], reached: Mapping[str, bool]) -> dict[str, str]:
    """Verdicts from what reached the probe: a proxy case is honoured when its request arrived; a
    bypass case when it did not, judged only if the client used the proxy at all."""
    proxied = reached.get("http_proxy", False) or reached.get("HTTP_PROXY", False)
    out: dict[str, str] = {}
    for case in cases:
        if case in ("http_proxy", "HTTP_PROXY", "jvm_flags"):
            out[case] = "yes" if reached[case] else "no"
        elif case == "jvm_non_proxy_hosts":
            out[case] = "n/a" if not reached["jvm_flags"] else "no" if reached[case] else "yes"
        else:
            out[case] = "n/a" if not proxied else "no" if reached[case] else "yes"
    return out


def probe(clients: Sequence[Client], workers: int = 4) -> list[Result]:
    """Run every case of every present client against one probe proxy."""
    with ProbeProxy() as proxy, closed_port() as dead_port:
        jobs = [(c, case) for c in clients if c.argv for case in (JVM_CASES if c.jvm else ENV_CASES)]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            reached = list(pool.map(lambda job: _run(job[0], job[1], proxy, dead_port), jobs))
    by_client: dict[str, dict[str, bool]] = {}
    for (client, case), hit in zip(jobs, reached, strict=True):
        by_client.setdefault(client.name, {})[case] = hit
    return [Result(c, verdicts(JVM_CASES if c.jvm else ENV_CASES, by_client[c.name]) if c.argv
                   else {case: c.note or "not found" for case in ENV_CASES})
            for c in clients]
