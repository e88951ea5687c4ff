"""`peel doctor proxy-env`: which HTTP clients on this VM honour the proxy variables, and what to set.

Measured, not assumed (`gateway.cli.proxyprobe`): each client found here (curl, wget, Python urllib
and requests, Node, Java) fetches an unreachable URL with one case of the variables set, and a local
probe proxy records whether the request came through it. Then it prints the variables to export
(both cases), the JVM flags (the JVM reads no variable) and a systemd drop-in, for the proxy URL
(`--proxy`, else `listeners.outbound.bind` from the environment or the settings file, as `peel serve`
reads it, else http://127.0.0.1:15001).
Needs no store and no admin API. Exit 0 with the report, 1 when the probe cannot run, 2 usage.
See docs/east-west.md.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shlex
import sys
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from gateway.cli.args import Commands, actions, add_command
from gateway.cli.context import config_path
from gateway.cli.output import print_json, table
from gateway.core.errors import ConfigError
from gateway.core.settings import env_name, split_bind

if TYPE_CHECKING:
    # (the probe, with http.server and subprocess, only for `peel doctor`: every `peel serve` parses
    # its arguments with this module loaded)
    from gateway.cli.proxyprobe import Result

DEFAULT_PROXY = "http://127.0.0.1:15001"
# `peel serve` reads listeners.outbound.bind from here before the settings file
OUTBOUND_BIND_ENV = env_name("listeners.outbound.bind")
DEFAULT_NO_PROXY = ("localhost", "127.0.0.1", "::1")
COLUMNS = (("http_proxy", "http_proxy"), ("HTTP_PROXY", "HTTP_PROXY"), ("no_proxy", "no_proxy"),
           ("NO_PROXY", "NO_PROXY"), ("cidr", "NO_PROXY CIDR"))


def proxy_url_arg(text: str) -> str:
    """`http://host:port`: the forward proxy the clients should use (no path, no credentials)."""
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None or parts.path not in ("", "/") \
            or parts.username or parts.query:
        raise argparse.ArgumentTypeError(f"{text!r} is not http://HOST:PORT")
    return f"http://{parts.netloc}"


def no_proxy_arg(text: str) -> tuple[str, ...]:
    """A comma-separated NO_PROXY list: host names, `.suffix`, IP addresses, CIDR blocks or `*`."""
    entries = tuple(e.strip() for e in text.split(",") if e.strip())
    for entry in entries:
        if any(c.isspace() or c in "|\"'\\%" for c in entry):
            raise argparse.ArgumentTypeError(f"{entry!r} is not a host, .suffix, address or CIDR block")
    return entries


def outbound_proxy(path: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The outbound listener as a proxy URL: `listeners.outbound.bind` as `peel serve` reads it (its
    environment variable, else the settings file; a wildcard bind is reached on 127.0.0.1), else the
    default. Only this key is read, so the doctor still answers for settings whose other keys
    `peel serve` would refuse."""
    env = os.environ if environ is None else environ
    bind: object = env.get(OUTBOUND_BIND_ENV)
    where = OUTBOUND_BIND_ENV
    if bind is None and path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(path, f"cannot read the settings file: {exc}") from exc
        listeners = data.get("listeners")
        outbound = listeners.get("outbound") if isinstance(listeners, dict) else None
        bind = outbound.get("bind") if isinstance(outbound, dict) else None
        where = "listeners.outbound.bind"
    if bind is None:
        return DEFAULT_PROXY
    try:
        host, port = split_bind(str(bind))
    except ValueError as exc:
        raise ConfigError(where, str(exc)) from exc
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def jvm_non_proxy_hosts(entries: Sequence[str]) -> tuple[str, list[str]]:
    """NO_PROXY entries as `-Dhttp.nonProxyHosts` (`|`-separated, `*` only at either end), and the
    entries it cannot express (CIDR blocks other than /8, /16, /24, /32)."""
    out: list[str] = []
    skipped: list[str] = []
    for entry in entries:
        if "/" in entry:
            try:
                net = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                skipped.append(entry)
                continue
            if net.version == 4 and net.prefixlen in (8, 16, 24, 32):
                octets = str(net.network_address).split(".")[: net.prefixlen // 8]
                out.append(".".join(octets) + (".*" if net.prefixlen < 32 else ""))
            else:
                skipped.append(entry)
        elif entry.startswith("."):
            out.append("*" + entry)
        elif ":" in entry:
            out.append(f"[{entry.strip('[]')}]")
        else:
            out.append(entry)
    return "|".join(out), skipped


def jvm_flags(proxy: str, entries: Sequence[str]) -> str:
    parts = urlsplit(proxy)
    hosts, _ = jvm_non_proxy_hosts(entries)
    flags = f"-Dhttp.proxyHost={parts.hostname} -Dhttp.proxyPort={parts.port}"
    return flags + (f" -Dhttp.nonProxyHosts={hosts}" if hosts else "")


def settings_to_set(proxy: str, entries: Sequence[str]) -> dict[str, str]:
    """Every variable, in the order to print: both cases (clients differ on which they read)."""
    no_proxy = ",".join(entries)
    values = {"http_proxy": proxy, "HTTP_PROXY": proxy}
    if no_proxy:
        values |= {"no_proxy": no_proxy, "NO_PROXY": no_proxy}
    return values | {"JAVA_TOOL_OPTIONS": jvm_flags(proxy, entries)}


def shell_lines(values: Mapping[str, str]) -> list[str]:
    proxy = [f"{k}={shlex.quote(v)}" for k, v in values.items() if k.lower() == "http_proxy"]
    bypass = [f"{k}={shlex.quote(v)}" for k, v in values.items() if k.lower() == "no_proxy"]
    lines = ["export " + " ".join(proxy)]
    if bypass:
        lines.append("export " + " ".join(bypass))
    return [*lines, f"export JAVA_TOOL_OPTIONS={shlex.quote(values['JAVA_TOOL_OPTIONS'])}"]


def systemd_dropin(values: Mapping[str, str]) -> str:
    """A `[Service]` drop-in; `%` doubled (systemd expands specifiers in Environment=)."""
    lines = ["# /etc/systemd/system/<app>.service.d/peel-proxy.conf, then: systemctl daemon-reload "
             "&& systemctl restart <app>", "[Service]"]
    lines += [f'Environment="{k}={v.replace("%", "%%")}"' for k, v in values.items()]
    return "\n".join(lines)


def warnings(results: Sequence[Result], entries: Sequence[str]) -> list[str]:
    """What the operator must know, from the verdicts measured on this machine."""
    notes: list[str] = []
    for r in results:
        v, name = r.verdicts, r.client.name
        if not r.client.argv:
            continue
        if r.client.jvm:
            if v.get("http_proxy") == "no" and v.get("HTTP_PROXY") == "no":
                notes.append(f"{name} ignores the variables: the JVM needs JAVA_TOOL_OPTIONS (or the "
                             "same -D flags on its command line)")
            continue
        if v["http_proxy"] == "no" and v["HTTP_PROXY"] == "no":
            notes.append(f"{name} ignores both http_proxy and HTTP_PROXY: call the outbound listener "
                         "with the service name in the Host header, or set the proxy in its code")
        elif "no" in (v["http_proxy"], v["HTTP_PROXY"]):
            reads = "http_proxy" if v["http_proxy"] == "yes" else "HTTP_PROXY"
            notes.append(f"{name} reads only {reads}: set both cases")
        if "no" in (v["no_proxy"], v["NO_PROXY"]) and "yes" in (v["no_proxy"], v["NO_PROXY"]):
            reads = "no_proxy" if v["no_proxy"] == "yes" else "NO_PROXY"
            notes.append(f"{name} reads only {reads}: set both cases")
        if v["cidr"] == "no" and any("/" in e for e in entries):
            notes.append(f"{name} does not honour CIDR blocks in NO_PROXY: list those addresses or "
                         "suffixes instead")
    if any("/" in e for e in entries) and jvm_non_proxy_hosts(entries)[1]:
        notes.append("-Dhttp.nonProxyHosts cannot express " + ", ".join(jvm_non_proxy_hosts(entries)[1])
                     + " (wildcards only)")
    return notes


def report(results: Sequence[Result], proxy: str, entries: Sequence[str]) -> dict[str, Any]:
    values = settings_to_set(proxy, entries)
    return {"proxy": proxy, "no_proxy": list(entries),
            "clients": [{"client": r.client.name, "version": r.client.version, "note": r.client.note,
                         "verdicts": dict(r.verdicts)} for r in results],
            "warnings": warnings(results, entries),
            "set": {"environment": values, "shell": shell_lines(values), "systemd": systemd_dropin(values)}}


def print_report(results: Sequence[Result], answer: Mapping[str, Any]) -> None:
    rows: list[tuple[str, ...]] = []
    jvm: list[str] = []
    for r in results:
        if not r.client.argv:
            rows.append((r.client.name, "-", r.client.note, "", "", "", ""))
        elif r.client.jvm:
            rows.append((r.client.name, r.client.version, r.verdicts["http_proxy"], r.verdicts["HTTP_PROXY"],
                         "n/a", "n/a", "n/a"))
            jvm.append(f"{r.client.name} with JAVA_TOOL_OPTIONS: -Dhttp.proxyHost/-Dhttp.proxyPort "
                       f"honoured: {r.verdicts['jvm_flags']}; -Dhttp.nonProxyHosts (*.internal) "
                       f"honoured: {r.verdicts['jvm_non_proxy_hosts']}")
        else:
            rows.append((r.client.name, r.client.version, *(r.verdicts[k] for k, _ in COLUMNS)))
    print("Which clients on this machine honour the proxy variables (measured against a local probe "
          "proxy;\nno_proxy/NO_PROXY: `.internal` honoured; CIDR: 127.0.0.0/8 honoured):\n")
    table(rows, ("CLIENT", "VERSION", *(title for _, title in COLUMNS)))
    for line in jvm:
        print(line)
    if answer["warnings"]:
        print()
        for note in answer["warnings"]:
            print(f"! {note}")
    print(f"\nTo send HTTP calls through {answer['proxy']} (shell, or the app's environment file):\n")
    print("\n".join(answer["set"]["shell"]))
    print(f"\nJVM flags (JAVA_TOOL_OPTIONS above, or on the java command line):\n\n"
          f"{answer['set']['environment']['JAVA_TOOL_OPTIONS']}")
    print(f"\nFor a systemd service:\n\n{answer['set']['systemd']}")
    print("\nHTTPS_PROXY is left unset: the outbound listener tunnels CONNECT only to its allow-list "
          "(docs/east-west.md).")


def cmd_proxy_env(args: argparse.Namespace) -> int:
    from gateway.cli.proxyprobe import discover, probe

    proxy = args.proxy or outbound_proxy(config_path(args))
    with tempfile.TemporaryDirectory(prefix="peel-doctor-") as workdir:
        results = probe(discover(args.python, Path(workdir)))
    answer = report(results, proxy, args.no_proxy)
    if args.json:
        print_json(answer)
    else:
        print_report(results, answer)
    sys.stdout.flush()
    return 0


def register(commands: Commands) -> None:
    """doctor proxy-env."""
    doctor = actions(add_command(commands, "doctor", None, "checks of this machine: proxy-env"))
    p = add_command(doctor, "proxy-env", cmd_proxy_env, "which HTTP clients here honour the proxy "
                    "variables (measured), and the variables, NO_PROXY list and JVM flags to set")
    p.add_argument("--proxy", type=proxy_url_arg, metavar="URL",
                   help=f"the proxy to print settings for (default: listeners.outbound.bind from "
                        f"{OUTBOUND_BIND_ENV} or the settings file, else {DEFAULT_PROXY})")
    p.add_argument("--no-proxy", type=no_proxy_arg, metavar="LIST", default=DEFAULT_NO_PROXY,
                   help="hosts that bypass the proxy, comma-separated "
                        f"(default: {','.join(DEFAULT_NO_PROXY)})")
    p.add_argument("--python", default="python3", metavar="PYTHON",
                   help="the interpreter whose urllib and requests to probe, e.g. an app's venv "
                        "(default: python3 on PATH)")
