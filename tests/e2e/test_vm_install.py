"""deploy/vm on a real booted systemd: a debootstrapped Debian bookworm booted with systemd-nspawn,
Peel installed by `install.sh --wheelhouse` from wheels built here, then reloaded, restarted,
killed, upgraded and removed while a client inside the VM counts failed requests and times each
connect; then installed again as a sidecar (`--role sidecar`) joined to a control plane in the VM.

Needs root, debootstrap and systemd-nspawn: skipped with the reason elsewhere, required in CI
(CI=true). The rootfs is cached under /var/tmp/peel-e2e-rootfs (built when absent, 1-3 minutes)
and booted with a volatile overlay, so every run starts from the same clean system.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROOTFS = Path("/var/tmp/peel-e2e-rootfs")
PACKAGES = "systemd,systemd-sysv,dbus,python3,python3-venv,curl,ca-certificates"
MACHINE = "peel-e2e"
# commands inside start from a clean environment: none of this host's PIP_*, PYTHON* or paths
INSIDE = ["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
          "LANG=C.UTF-8", "HOME=/root"]


def missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (debootstrap, systemd-nspawn)"
    for tool in ("debootstrap", "systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install debootstrap systemd-container util-linux)"
    return None


REASON = missing()
if REASON and os.environ.get("CI") == "true":
    raise RuntimeError(f"tests/e2e must run in CI: {REASON}")
pytestmark = [pytest.mark.skipif(REASON is not None, reason=REASON or ""), pytest.mark.timeout(900)]


def debian_mirror() -> str:
    """The Debian mirror apt uses on this machine (deb822 or one-line sources), else deb.debian.org."""
    texts = [p.read_text() for p in [Path("/etc/apt/sources.list"),
                                      *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
             if p.is_file() and p.suffix in (".list", ".sources")]
    for text in texts:
        for url in re.findall(r"^\s*(?:URIs:|deb)\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M):
            if "security" not in url and ("debian" in url):
                return str(url)
    return "http://deb.debian.org/debian"


def rootfs() -> Path:
    if (ROOTFS / "usr/lib/systemd/systemd").exists() and (ROOTFS / "usr/bin/python3").exists():
        return ROOTFS
    partial = ROOTFS.with_name(ROOTFS.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    subprocess.run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm",
                    str(partial), debian_mirror()], check=True, stdout=subprocess.DEVNULL)
    shutil.rmtree(ROOTFS, ignore_errors=True)
    partial.rename(ROOTFS)
    return ROOTFS


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


@dataclass
class Vm:
    """The booted container; `run` executes a command inside it (all its namespaces)."""

    nspawn: subprocess.Popen[bytes]
    pid1: int
    log: Path

    def run(self, *command: str, check: bool = True, timeout: float = 300,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["nsenter", "-t", str(self.pid1), "-a", *INSIDE, *command], text=True,
                              capture_output=True, timeout=timeout, input=input)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}\n"
                                 f"{done.stderr}")
        return done

    def show(self, prop: str, unit: str = "peel.service") -> str:
        return self.run("systemctl", "show", "-P", prop, unit).stdout.strip()

    def journal(self) -> str:
        return self.run("journalctl", "-u", "peel", "--no-pager", "-n", "80", check=False).stdout


# a connect longer than this is a SYN dropped and sent again (1 s, then 3 s): before the drain left
# systemd's sockets alone, every connect during a restart waited so (gateway/edge/drain.py)
CONNECT_LIMIT = 0.5


@dataclass
class Load:
    """curl in a loop inside the VM against `url`; every answer that is not one of `ok` is a failure
    (a refused or reset connection is curl's 000). Each TCP connect is timed."""

    vm: Vm
    url: str = "http://127.0.0.1:8080/"
    ok: tuple[str, ...] = ("200",)
    codes: list[str] = field(default_factory=list)
    connects: list[float] = field(default_factory=list)
    process: subprocess.Popen[str] | None = None
    reader: threading.Thread | None = None

    def __enter__(self) -> Load:
        script = ("while :; do curl -s -o /dev/null -w '%{http_code} %{time_connect}\\n' "
                  f"--max-time 60 {self.url} || true; done")
        command = ["nsenter", "-t", str(self.vm.pid1), "-a", *INSIDE, "sh", "-c", script]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        wait_for(lambda: len(self.codes) >= 5, 60, "the load to start")
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            code, _, connect = line.strip().partition(" ")
            self.codes.append(code)
            if code != "000":
                self.connects.append(float(connect))

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None and self.reader is not None
        count = len(self.codes)
        wait_for(lambda: len(self.codes) >= count + 5, 60, "requests after the change")
        self.process.terminate()
        self.process.wait(30)
        self.reader.join(10)

    def failed(self) -> list[str]:
        return [code for code in self.codes[:-1] if code not in self.ok]  # the last may be cut

    def slow_connects(self) -> list[float]:
        return [c for c in self.connects if c > CONNECT_LIMIT]


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    base = rootfs()
    tmp = tmp_path_factory.mktemp("vm")
    wheels = tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", str(ROOT), "-w", str(wheels)],
                   check=True, cwd=tmp, stdout=subprocess.DEVNULL)
    log = tmp / "nspawn.log"
    with open(log, "wb") as out:
        nspawn = subprocess.Popen(
            ["systemd-nspawn", "-D", str(base), "-b", "--register=no", "--keep-unit",
             "--volatile=overlay", "--private-network", f"--machine={MACHINE}",
             f"--bind-ro={wheels}:/srv/wheels", f"--bind-ro={ROOT / 'deploy'}:/srv/deploy"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        def pid1() -> int:
            try:
                children = Path(f"/proc/{nspawn.pid}/task/{nspawn.pid}/children").read_text().split()
            except OSError:
                children = []
            for child in children:
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return int(child)
            if nspawn.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited:\n{log.read_text()}")
            return 0

        wait_for(lambda: pid1() > 0, 60, "the container's systemd")
        machine = Vm(nspawn, pid1(), log)
        # systemctl answers once the container's systemd has its private bus up; then wait for boot
        wait_for(lambda: machine.run("systemctl", "is-system-running", "--wait", check=False,
                                     timeout=120).stdout.strip() in ("running", "degraded"),
                 120, "the container to boot")
        yield machine
    finally:
        nspawn.terminate()  # systemd-nspawn asks the container's systemd to power off
        try:
            nspawn.wait(60)
        except subprocess.TimeoutExpired:
            nspawn.kill()
            nspawn.wait()


@pytest.fixture(scope="module")
def installed(vm: Vm) -> Vm:
    """Peel installed from the wheelhouse, with a route to an upstream inside the VM."""
    done = vm.run("/srv/deploy/vm/install.sh", "--wheelhouse", "/srv/wheels")
    assert "started peel.service" in done.stdout, done.stdout
    vm.run("systemd-run", "--unit=upstream", "--property=WorkingDirectory=/usr/share/doc",
           "python3", "-m", "http.server", "8081", "--bind", "127.0.0.1")
    token = vm.run("runuser", "-u", "peel", "--", "/opt/peel/bin/peel", "token", "create", "e2e",
                   "--config", "/etc/peel/peel.toml").stdout.strip().splitlines()[-1]
    document = ('{"services": [{"name": "up", "endpoints": ["http://127.0.0.1:8081"]}],'
                ' "routes": [{"name": "all", "match": {"path_prefix": "/"}, "service": "up"}]}')
    vm.run("/opt/peel/bin/peel", "apply", "-f", "-", "--config", "/etc/peel/peel.toml",
           "--token", token, "--reason", "e2e", input=document)
    wait_for(lambda: vm.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                            "http://127.0.0.1:8080/", check=False).stdout == "200", 30, "the route")
    return vm


def test_install_reaches_active_with_ready_notified(installed: Vm) -> None:
    vm = installed
    assert vm.show("ActiveState") == "active", vm.journal()
    assert vm.show("Type") == "notify"
    # STATUS= arrives in the same datagram as READY=1: systemd heard Peel's notification
    assert vm.show("StatusText").startswith("serving config version"), vm.journal()
    assert vm.show("ActiveState", "peel.socket") == "active"
    assert vm.show("ActiveState", "peel-admin.socket") == "active"
    assert "socket passed by systemd" in vm.journal()
    assert vm.show("User") == "peel"
    stat = vm.run("stat", "-c", "%a %U %G", "/etc/peel/peel.toml").stdout.split()
    assert stat == ["640", "root", "peel"]
    assert vm.run("stat", "-c", "%U", "/var/lib/peel/peel.db").stdout.strip() == "peel"


def test_the_service_runs_optimized_bytecode_the_installer_compiled(installed: Vm) -> None:
    """peel.service runs with PYTHONOPTIMIZE=2 from the cache install.sh compiled into the release
    (gateway/core/bytecode.py): nothing the service imports is compiled at its start."""
    vm = installed
    pid = vm.show("MainPID")
    environ = vm.run("cat", f"/proc/{pid}/environ").stdout.split("\0")
    assert "PYTHONOPTIMIZE=2" in environ and "PYTHONDONTWRITEBYTECODE=1" in environ
    assert "PYTHONPYCACHEPREFIX=/opt/peel/current/pycache" in environ
    cache = vm.run("readlink", "-f", "/opt/peel/current/pycache").stdout.strip()
    assert cache.startswith("/opt/peel/releases/"), cache
    assert vm.run("stat", "-c", "%U", cache).stdout.strip() == "root"
    assert vm.run("runuser", "-u", "peel", "--", "test", "-w", cache, check=False).returncode != 0
    # the interpreter ExecStart's script runs: the release's, by its own path
    python = vm.run("head", "-n1", "/opt/peel/bin/peel").stdout.strip().removeprefix("#!")
    assert re.fullmatch(r"/opt/peel/releases/[^/]+/bin/python[0-9.]*", python), python
    imports = vm.run("runuser", "-u", "peel", "--", "env", *[e for e in environ if e.startswith("PYTHON")],
                     python, "-v", "-c",
                     "import gateway.cli, gateway.server.serve, gateway.admin.app, "
                     "sqlalchemy.dialects.sqlite").stderr
    loaded = [line for line in imports.splitlines() if line.startswith("# code object from ")]
    assert len(loaded) > 300, imports[-2000:]
    compiled_at_start = [line for line in loaded if not line.endswith(".opt-2.pyc'")]
    assert compiled_at_start == [], compiled_at_start


def test_unit_verifies_and_rates_ok(installed: Vm) -> None:
    verify = installed.run("systemd-analyze", "verify", "/etc/systemd/system/peel.service",
                           "/etc/systemd/system/peel.socket", "/etc/systemd/system/peel-admin.socket",
                           check=False)
    assert verify.returncode == 0 and verify.stdout.strip() == "", verify.stdout + verify.stderr
    assert "peel" not in verify.stderr, verify.stderr
    security = installed.run("systemd-analyze", "security", "--no-pager", "peel.service", check=False)
    found = re.search(r"Overall exposure level for peel.service: (\d+\.\d+) (\w+)", security.stdout)
    assert found is not None, security.stdout
    print(f"systemd-analyze security peel.service: {found[1]} {found[2]}")
    assert float(found[1]) <= 2.5 and found[2] == "OK", security.stdout


def test_reload_and_restart_under_load_fail_no_request(installed: Vm) -> None:
    vm = installed
    before = vm.show("MainPID")
    with Load(vm) as load:
        vm.run("systemctl", "reload", "peel")
        assert vm.show("MainPID") == before
        vm.run("systemctl", "restart", "peel")
        assert vm.show("ActiveState") == "active"
        assert vm.show("MainPID") != before
    assert len(load.codes) > 20
    assert load.failed() == [], (load.failed(), vm.journal())
    print(f"connects across reload and restart: {len(load.connects)}, the slowest "
          f"{max(load.connects) * 1000:.0f} ms")
    assert load.slow_connects() == [], load.slow_connects()


def test_kill_9_is_restarted_by_systemd(installed: Vm) -> None:
    vm = installed
    before = vm.show("MainPID")
    restarts = int(vm.show("NRestarts"))
    vm.run("sh", "-c", f"kill -9 {before}")  # minbase has no /bin/kill: the shell's
    wait_for(lambda: vm.show("MainPID") not in ("0", before) and vm.show("ActiveState") == "active",
             60, "systemd to restart Peel")
    assert int(vm.show("NRestarts")) == restarts + 1
    assert vm.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                  "http://127.0.0.1:8080/").stdout == "200"


def test_rerunning_the_installer_upgrades_in_place_under_load(installed: Vm) -> None:
    vm = installed
    before_pid = vm.show("MainPID")
    before_release = vm.run("readlink", "/opt/peel/current").stdout.strip()
    vm.run("sh", "-c", "echo '# kept' >> /etc/peel/peel.toml")
    with Load(vm) as load:
        done = vm.run("/srv/deploy/vm/install.sh", "--wheelhouse", "/srv/wheels")
    assert "upgraded and restarted" in done.stdout and "kept the existing" in done.stdout, done.stdout
    assert vm.run("readlink", "/opt/peel/current").stdout.strip() != before_release
    assert vm.show("MainPID") != before_pid and vm.show("ActiveState") == "active"
    assert vm.run("tail", "-n", "1", "/etc/peel/peel.toml").stdout.strip() == "# kept"
    assert load.failed() == [], (load.failed(), vm.journal())
    print(f"connects across the upgrade: {len(load.connects)}, the slowest "
          f"{max(load.connects) * 1000:.0f} ms")
    assert load.slow_connects() == [], load.slow_connects()


def test_uninstall_keeps_the_data(installed: Vm) -> None:
    vm = installed
    done = vm.run("/srv/deploy/vm/install.sh", "--uninstall")
    assert "kept" in done.stdout
    assert vm.run("test", "-e", "/var/lib/peel/peel.db", check=False).returncode == 0
    assert vm.run("test", "-e", "/etc/peel/peel.toml", check=False).returncode == 0
    assert vm.run("test", "-e", "/opt/peel", check=False).returncode != 0
    assert vm.run("systemctl", "cat", "peel.service", check=False).returncode != 0
    assert vm.run("curl", "-s", "http://127.0.0.1:8080/", check=False).returncode != 0


CONTROL = """
[database]
url = "sqlite:////root/cp/peel.db"
[listeners.public]
bind = "127.0.0.1:8090"
[listeners.admin]
bind = "127.0.0.1:9911"
[server]
snapshot_path = "/root/cp/snapshot.json"
run_dir = "/root/cp/run"
[identity]
ca_dir = "/root/cp/ca"
state_dir = "/root/cp/identity"
"""


def control_plane(vm: Vm) -> str:
    """A control plane in the VM (its own virtualenv, CA and store with one document; admin API on
    127.0.0.1:9911); returns a join token for the service `orders`."""
    peel = "/root/cp/bin/peel"
    vm.run("python3", "-m", "venv", "/root/cp")
    vm.run("/root/cp/bin/pip", "install", "-q", "--no-index", "--find-links", "/srv/wheels", "peel")
    vm.run("sh", "-c", "cat > /root/cp/peel.toml", input=CONTROL)
    vm.run(peel, "db", "upgrade", "--config", "/root/cp/peel.toml")
    vm.run(peel, "ca", "init", "--config", "/root/cp/peel.toml")
    token = vm.run(peel, "join-token", "create", "--service", "orders", "--config",
                   "/root/cp/peel.toml").stdout.strip().splitlines()[-1]
    vm.run("systemd-run", "--unit=control", "--property=WorkingDirectory=/root/cp", peel, "serve",
           "--config", "/root/cp/peel.toml")
    wait_for(lambda: vm.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                            "http://127.0.0.1:9911/healthz", check=False).stdout not in ("", "000"),
             60, "the control plane")
    admin = vm.run(peel, "token", "create", "e2e", "--config",
                   "/root/cp/peel.toml").stdout.strip().splitlines()[-1]
    document = ('{"services": [{"name": "orders", "endpoints": ["http://127.0.0.1:8081"]}],'
                ' "routes": [{"name": "all", "match": {"path_prefix": "/"}, "service": "orders"}]}')
    vm.run(peel, "apply", "-f", "-", "--config", "/root/cp/peel.toml", "--token", admin,
           "--reason", "e2e", input=document)
    return token


def test_sidecar_role_installs_only_the_east_west_listeners_joined(installed: Vm) -> None:
    vm = installed
    install = ["/srv/deploy/vm/install.sh", "--wheelhouse", "/srv/wheels"]
    # the settings the uninstall kept say role = "gateway": a sidecar install refuses, changing nothing
    refused = vm.run(*install, "--role", "sidecar", check=False)
    assert refused.returncode != 0 and 'says role = "gateway"' in refused.stderr, refused.stderr
    assert vm.run("test", "-e", "/opt/peel", check=False).returncode != 0
    vm.run("/srv/deploy/vm/install.sh", "--purge")
    token = control_plane(vm)
    # without a join token: installed, nothing enabled or started (it could not run without identity)
    done = vm.run(*install, "--role", "sidecar", "--control", "http://127.0.0.1:9911",
                  "--app", "http://127.0.0.1:8081")
    assert "wrote /etc/peel/peel.toml (role sidecar)" in done.stdout, done.stdout
    assert "installed, not started" in done.stdout, done.stdout
    assert vm.show("ActiveState") == "inactive" and vm.show("MainPID") == "0", vm.journal()
    assert vm.show("UnitFileState") == "disabled"
    # re-run (no --role: the settings say sidecar) with the token: joined at install, started
    done = vm.run(*install, "--control", "http://127.0.0.1:9911", "--join-token", token)
    assert "kept the existing /etc/peel/peel.toml (role sidecar)" in done.stdout, done.stdout
    assert "joined as spiffe://" in done.stdout and "started peel.service" in done.stdout, done.stdout
    assert vm.show("ActiveState") == "active", vm.journal()
    assert vm.show("StatusText").startswith("serving config version"), vm.journal()
    requires = set(vm.show("Requires").split())
    assert {"peel-outbound.socket", "peel-inbound.socket"} <= requires, requires
    assert not {"peel.socket", "peel-admin.socket"} & requires, requires
    for unit in ("peel-outbound.socket", "peel-inbound.socket"):
        assert vm.show("ActiveState", unit) == "active", unit
    for unit in ("peel.socket", "peel-admin.socket"):
        assert vm.show("LoadState", unit) == "not-found", unit
    journal = vm.journal()
    assert "outbound listener: socket passed by systemd" in journal, journal
    assert "inbound listener: socket passed by systemd" in journal, journal
    settings = vm.run("cat", "/etc/peel/peel.toml").stdout
    assert 'role = "sidecar"' in settings and 'source = "control"' in settings, settings
    assert "[database]" not in settings, settings
    # its route table comes from the control plane it joined, over its admin API
    wait_for(lambda: "loaded from the control plane" in vm.journal(), 60, "the control plane's table")
    assert vm.run("stat", "-c", "%U", "/var/lib/peel/identity/cert.pem").stdout.strip() == "peel"
    # no public or admin listener
    for port in (8080, 9901):
        assert vm.run("curl", "-s", f"http://127.0.0.1:{port}/", check=False).returncode == 7, port
    verify = vm.run("systemd-analyze", "verify", "/etc/systemd/system/peel.service",
                    "/etc/systemd/system/peel-outbound.socket",
                    "/etc/systemd/system/peel-inbound.socket", check=False)
    assert verify.returncode == 0 and verify.stdout.strip() == "", verify.stdout + verify.stderr
    # a restart under load on the outbound listener: every request answered (whatever the empty
    # table says), no connect waiting
    before = vm.show("MainPID")
    with Load(vm, "http://127.0.0.1:15001/", ok=tuple(str(c) for c in range(200, 600))) as load:
        vm.run("systemctl", "restart", "peel")
        assert vm.show("ActiveState") == "active" and vm.show("MainPID") != before
    assert load.failed() == [], (load.failed(), vm.journal())
    print(f"sidecar: connects across a restart: {len(load.connects)}, the slowest "
          f"{max(load.connects) * 1000:.0f} ms")
    assert load.slow_connects() == [], load.slow_connects()
