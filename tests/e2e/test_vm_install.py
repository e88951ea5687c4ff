"""deploy/vm on a real booted systemd: a debootstrapped Debian bookworm booted with systemd-nspawn,
Peel installed by `install.sh --wheelhouse` from wheels built here, then reloaded, restarted,
killed, upgraded and removed while a client inside the VM counts failed requests.

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


@dataclass
class Load:
    """curl in a loop inside the VM against the public listener; every answer that is not 200 is
    a failure (a refused or reset connection is curl's 000)."""

    vm: Vm
    codes: list[str] = field(default_factory=list)
    process: subprocess.Popen[str] | None = None
    reader: threading.Thread | None = None

    def __enter__(self) -> Load:
        script = ("while :; do curl -s -o /dev/null -w '%{http_code}\\n' --max-time 60 "
                  "http://127.0.0.1:8080/ || true; done")
        command = ["nsenter", "-t", str(self.vm.pid1), "-a", *INSIDE, "sh", "-c", script]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        wait_for(lambda: len(self.codes) >= 5, 60, "the load to start")
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.codes.append(line.strip())

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None and self.reader is not None
        count = len(self.codes)
        wait_for(lambda: len(self.codes) >= count + 5, 60, "requests after the change")
        self.process.terminate()
        self.process.wait(30)
        self.reader.join(10)

    def failed(self) -> list[str]:
        return [code for code in self.codes[:-1] if code != "200"]  # the last may be cut by terminate


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


def test_uninstall_keeps_the_data(installed: Vm) -> None:
    vm = installed
    done = vm.run("/srv/deploy/vm/install.sh", "--uninstall")
    assert "kept" in done.stdout
    assert vm.run("test", "-e", "/var/lib/peel/peel.db", check=False).returncode == 0
    assert vm.run("test", "-e", "/etc/peel/peel.toml", check=False).returncode == 0
    assert vm.run("test", "-e", "/opt/peel", check=False).returncode != 0
    assert vm.run("systemctl", "cat", "peel.service", check=False).returncode != 0
    assert vm.run("curl", "-s", "http://127.0.0.1:8080/", check=False).returncode != 0
