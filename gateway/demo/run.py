"""`peel demo`: Peel in front of a sample monolith, with a new `orders` service ready to take `/orders`.

Steps: check the ports, write `peel.toml` in the demo dir (SQLite store there), `peel db upgrade`,
create an admin token, start the monolith and the orders service, start `peel serve`, apply the
starting document through the admin API (everything on the monolith), wait until the gateway answers
from the monolith, print what runs where and the commands to try, then relay the children's output
until Ctrl-C or SIGTERM. Any child that dies on its own stops the demo with exit status 1.

Every `peel` command runs as `sys.executable -m gateway.cli`, so the demo works from a virtualenv
that is not on PATH. `python -m gateway.demo.run` runs the demo without the `peel` entry point.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import TextIO

from gateway.demo.children import Child, Children
from gateway.demo.options import add_arguments
from gateway.demo.sample import sample_yaml
from gateway.demo.walkthrough import strangler_steps

STARTUP_SECONDS = 60.0
# The gateway's drain period in the demo: Ctrl-C should not wait the production 30 s.
GRACE_SECONDS = 3.0
STOP_SECONDS = GRACE_SECONDS + 7.0
PEEL_COMMAND_SECONDS = 60.0


class DemoFailed(Exception):
    """The demo cannot go on; the message is the one-line reason (plus a child's last output)."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM arrived while the demo was starting."""


@dataclass(frozen=True, slots=True)
class Ports:
    public: int
    admin: int
    monolith: int
    orders: int

    def named(self) -> list[tuple[str, str, int]]:
        """(what, option, port) for each listener the demo needs."""
        return [("the gateway's public listener", "--public-port", self.public),
                ("the admin API", "--admin-port", self.admin),
                ("the sample monolith", "--monolith-port", self.monolith),
                ("the sample orders service", "--orders-port", self.orders)]


def check_ports(ports: Ports) -> None:
    """Refuse busy or repeated ports up front, naming the option that changes each."""
    seen: dict[int, str] = {}
    # Mistakes in the arguments first, so they are named whatever else runs on this machine.
    for what, option, port in ports.named():
        if not 1 <= port <= 65535:
            raise DemoFailed(f"{option} {port} is not a port number (1-65535)")
        if port in seen:
            raise DemoFailed(f"port {port} is given for both {seen[port]} and {what}; "
                             f"choose another with {option}")
        seen[port] = what
    for what, option, port in ports.named():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # The same option `peel serve` binds with, so a port in TIME_WAIT is not called busy.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                raise DemoFailed(f"port {port} for {what} is busy ({exc.strerror or exc}); stop what "
                                 f"uses it or choose another port with {option}") from None


def toml_string(text: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes.
    return json.dumps(text)


def write_settings(directory: Path, ports: Ports) -> Path:
    """The demo's `peel.toml`: SQLite store, snapshot and access log in the demo dir, loopback only."""
    path = directory / "peel.toml"
    path.write_text(
        "# Written by `peel demo`; rewritten on every run.\n"
        f"[database]\nurl = {toml_string('sqlite:///' + str(directory / 'peel.db'))}\n\n"
        f"[listeners.public]\nbind = \"127.0.0.1:{ports.public}\"\n\n"
        f"[listeners.admin]\nbind = \"127.0.0.1:{ports.admin}\"\n\n"
        f"[server]\nworkers = 1\ngrace_period = {GRACE_SECONDS}\n"
        f"snapshot_path = {toml_string(str(directory / 'snapshot.json'))}\n"
        f"run_dir = {toml_string(str(directory / 'run'))}\n\n"
        f"[access_log]\ntarget = {toml_string(str(directory / 'access.log'))}\n")
    return path


def child_environment() -> dict[str, str]:
    """This environment without `PEEL_*` settings, which would override the demo's `peel.toml`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEEL_")}
    env["PYTHONUNBUFFERED"] = "1"  # relay the children's lines as they are written
    return env


def peel_alias() -> str | None:
    """An `alias peel=...` line for the banner when `peel` on PATH is not this installation's."""
    script = Path(sys.executable).parent / "peel"
    found = shutil.which("peel")
    if found and script.exists() and Path(found).resolve() == script.resolve():
        return None
    target = str(script) if script.exists() else f"{sys.executable} -m gateway.cli"
    return f"alias peel={shlex.quote(target)}"


class Demo:
    """One run of the demo: its directory, ports, children and stop flag."""

    def __init__(self, directory: Path, ports: Ports, out: TextIO | None = None) -> None:
        self.dir = directory
        self.ports = ports
        self.env = child_environment()
        self.children = Children(out or sys.stdout, self.env, cwd=str(directory))
        self.stop_requested = threading.Event()
        self.config = directory / "peel.toml"
        self.admin_url = f"http://127.0.0.1:{ports.admin}"
        self.token = ""

    # -- helpers -------------------------------------------------------------------------------

    def peel(self, *args: str, env: dict[str, str] | None = None) -> str:
        """Run one `peel` command to completion; its stdout, or DemoFailed with its stderr."""
        argv = [sys.executable, "-m", "gateway.cli", *args]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, env=env or self.env,
                                  cwd=str(self.dir), timeout=PEEL_COMMAND_SECONDS, check=False)
        except subprocess.TimeoutExpired:
            raise DemoFailed(f"`peel {' '.join(args)}` did not finish in {PEEL_COMMAND_SECONDS:.0f} s") \
                from None
        if done.returncode != 0:
            reason = done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}"
            raise DemoFailed(f"`peel {' '.join(args)}` failed: {reason}")
        return done.stdout

    def wait_for(self, what: str, ready: Callable[[], bool], seconds: float = STARTUP_SECONDS) -> None:
        """Poll `ready` until true; give up on a deadline, a dead child or a stop request."""
        deadline = time.monotonic() + seconds
        while not ready():
            dead = self.children.first_dead()
            if dead is not None:
                raise DemoFailed(f"{dead.describe_exit()}\n(while waiting for {what})")
            if time.monotonic() > deadline:
                raise DemoFailed(f"{what} did not happen within {seconds:.0f} s")
            if self.stop_requested.wait(0.1):
                raise Interrupted

    def start(self, name: str, argv: Sequence[str]) -> Child:
        self.children.say(f"peel demo: starting {name}: {shlex.join(argv)}")
        return self.children.start(name, argv)

    # -- the steps -----------------------------------------------------------------------------

    def prepare(self) -> None:
        check_ports(self.ports)
        self.dir.mkdir(parents=True, exist_ok=True)
        write_settings(self.dir, self.ports)
        (self.dir / "sample.yaml").write_text(sample_yaml(f"http://127.0.0.1:{self.ports.monolith}",
                                                          f"http://127.0.0.1:{self.ports.orders}"))
        self.children.say(f"peel demo: settings in {self.config}; upgrading the store")
        self.peel("db", "upgrade", "--config", str(self.config))
        name = datetime.now().strftime("demo-%Y%m%d-%H%M%S")
        output = self.peel("token", "create", name, "--config", str(self.config))
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        if not lines:
            raise DemoFailed("`peel token create` printed no token")
        self.token = lines[-1]

    def start_children(self) -> None:
        python = sys.executable
        self.start("monolith", [python, "-m", "gateway.demo.monolith", "--port", str(self.ports.monolith)])
        self.start("orders", [python, "-m", "gateway.demo.orders", "--port", str(self.ports.orders)])
        self.wait_for("the monolith answering /health", lambda: status(self.ports.monolith, "/health") == 200)
        self.wait_for("the orders service answering /health",
                      lambda: status(self.ports.orders, "/health") == 200)
        self.start("peel", [python, "-m", "gateway.cli", "serve", "--config", str(self.config)])
        self.wait_for("the admin API answering /healthz", lambda: status(self.ports.admin, "/healthz") == 200)

    def apply_sample(self) -> None:
        env = {**self.env, "PEEL_ADMIN_URL": self.admin_url, "PEEL_ADMIN_TOKEN": self.token}
        self.peel("apply", "-f", str(self.dir / "sample.yaml"),
                  "--reason", "peel demo: start with everything on the monolith", env=env)
        self.wait_for("the gateway answering /orders from the monolith",
                      lambda: served_by(self.ports.public, "/orders") == "legacy-monolith")

    def latest_version(self) -> int | None:
        """The config version after the sample was applied (for the rollback hint), if readable."""
        try:
            from routes.store import Store

            store = Store(f"sqlite:///{self.dir / 'peel.db'}")
            try:
                return store.latest_version()
            finally:
                store.close()
        except Exception:  # only a hint in the banner; the demo runs without it
            return None

    def banner(self) -> str:
        peel = "peel"
        alias = peel_alias()
        public = f"http://localhost:{self.ports.public}"
        version = self.latest_version()
        rollback = (f"{peel} config rollback {version}    # back to version {version}: /orders on the "
                    "monolith again" if version else
                    f"{peel} config rollback N    # N: the version before step 3, from step 5")
        lines = [
            "",
            "=" * 78,
            " Peel demo is running",
            "=" * 78,
            f"  gateway (peel serve)  public  {public}",
            f"                        admin   {self.admin_url}",
            f"  legacy monolith               http://127.0.0.1:{self.ports.monolith}",
            f"  orders service                http://127.0.0.1:{self.ports.orders}",
            f"  settings {self.config}",
            f"  store    {self.dir / 'peel.db'}   access log {self.dir / 'access.log'}",
            "",
            f"  admin token (shown once): {self.token}",
            f"  dashboard  {self.admin_url}/dashboard#token={self.token}",
            "",
            "In another shell:",
            f"  export PEEL_ADMIN_URL={self.admin_url} PEEL_ADMIN_TOKEN={self.token}",
            f"  export PEEL_CONFIG={shlex.quote(str(self.config))}",
            *([f"  {alias}"] if alias else []),
            "",
            "Then try:",
            f"  1. curl -i {public}/orders    # X-Served-By: legacy-monolith",
            f"  2. {peel} match GET {public}/orders/7    # which route and service would answer",
            f"  3. {peel} routes set orders --service orders --path-prefix /orders --reason \"peel orders\"",
            f"  4. curl -i {public}/orders    # now X-Served-By: orders-service",
            f"  5. {peel} config history",
            f"  6. {rollback}",
            f"  7. {peel} export",
            f"  8. curl -o /dev/null -w '%{{size_download}} bytes in %{{time_total}} s\\n' "
            f"'{public}/download?mb=100'    # 100 MiB streamed through the gateway",
            f"  9. {peel} inventory {shlex.quote(str(self.dir / 'access.log'))} --legacy legacy --routes"
            "    # the paths served, as templates: how much the monolith answered, which route now",
            "",
            *strangler_steps(peel, public),
            "",
            "Ctrl-C stops everything.",
            "=" * 78,
        ]
        return "\n".join(lines)

    def watch(self) -> None:
        """Stay in the foreground until a stop request (return) or a child's death (DemoFailed)."""
        while not self.stop_requested.wait(0.2):
            dead = self.children.first_dead()
            if dead is not None:
                raise DemoFailed(dead.describe_exit())

    def run(self) -> int:
        try:
            self.prepare()
            self.start_children()
            self.apply_sample()
            self.children.say(self.banner())
            self.watch()
            return 0
        except Interrupted:
            return 0
        except DemoFailed as exc:
            if self.stop_requested.is_set():
                # Ctrl-C in a terminal also reaches a `peel` command the demo was running; its
                # failure is then the stop the operator asked for, not an error.
                return 0
            self.children.say(f"peel demo: {exc}")
            print(f"peel demo: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 1
        finally:
            if self.children.running:
                self.children.say("peel demo: stopping")
                killed = self.children.stop_all(STOP_SECONDS)
                if killed:
                    self.children.say(f"peel demo: killed {', '.join(killed)} after {STOP_SECONDS:.0f} s")
                self.children.say("peel demo: stopped")


def _get(port: int, path: str) -> tuple[int, str | None]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.headers.get("X-Served-By")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("X-Served-By")
    except OSError:
        return 0, None


def status(port: int, path: str) -> int:
    return _get(port, path)[0]


def served_by(port: int, path: str) -> str | None:
    return _get(port, path)[1]


def run_demo(args: argparse.Namespace) -> int:
    """`peel demo`: run until Ctrl-C or SIGTERM (0), or until something fails (1, reason on stderr)."""
    ports = Ports(args.public_port, args.admin_port, args.monolith_port, args.orders_port)
    demo = Demo(Path(args.dir).resolve(), ports)

    def request_stop(signum: int, frame: FrameType | None) -> None:
        demo.stop_requested.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return demo.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="peel demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run_demo(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
