"""The `peel` command groups: one registry line per group, the help order, usage checks as exit 2."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from gateway.cli import build_parser, main, parser
from gateway.cli.args import Commands, add_command

Leaves = dict[tuple[str, ...], argparse.ArgumentParser]


def _leaves(p: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Leaves:
    """Every runnable command, by its words (`("routes", "set")`)."""
    found: Leaves = {}
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        found[path] = p
    for action in subs:
        for name, child in action.choices.items():
            found.update(_leaves(child, (*path, name)))
    return found


def test_help_lists_the_commands_in_registry_order() -> None:
    usage = build_parser().format_help()
    commands = ["serve", "db", "token", "demo", "apply", "export", "services", "routes", "match", "config"]
    positions = [usage.index(f"\n    {name} ") for name in commands]
    assert positions == sorted(positions)


def test_every_command_runs_something() -> None:
    leaves = _leaves(build_parser())
    assert ("routes", "set") in leaves and ("config", "rollback") in leaves
    for path, leaf in leaves.items():
        assert callable(leaf.get_default("handler")), " ".join(path)


def test_a_new_group_is_one_register_function_in_the_registry(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    def hello(args: argparse.Namespace) -> int:
        print(f"hello {args.who}")
        return 0

    def register(commands: Commands) -> None:
        add_command(commands, "hello", hello, "say hello").add_argument("who")

    monkeypatch.setattr(parser, "COMMAND_GROUPS", (*parser.COMMAND_GROUPS, register))
    assert main(["hello", "world", "--json"]) == 0
    assert capsys.readouterr().out == "hello world\n"


def test_a_failed_usage_check_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["routes", "set", "r", "--path", "/x"])
    assert exit_.value.code == 2
    assert "--service is required unless -f gives the route" in capsys.readouterr().err


def test_parsing_serve_loads_no_other_commands_machinery() -> None:
    # every `peel serve` builds the whole parser: what a command needs only when it runs (the demo's
    # runner, the proxy probe's HTTP server, YAML) is imported by its handler, not at registration
    code = ("import sys; from gateway.cli.parser import build_parser; build_parser().parse_args(['serve']); "
            "print(sorted(m for m in ('gateway.demo.run', 'gateway.cli.proxyprobe', 'http.server', "
            "'urllib.request', 'yaml') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_parser_is_freed_before_the_command_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    # `peel serve` runs for months: the parser of every command (some 0.4 MiB) must not stay alive
    # in its frame, nor be frozen with what start-up leaves (gateway.server.serve.settle_memory)
    import gc

    import gateway.cli

    alive: list[int] = []
    real = gateway.cli.parse

    def probe(args: argparse.Namespace) -> int:
        gc.collect()
        alive.append(sum(isinstance(o, argparse.ArgumentParser) for o in gc.get_objects()))
        return 0

    def parse(argv: list[str] | None = None) -> argparse.Namespace:
        args = real(argv)
        args.handler = probe
        return args

    monkeypatch.setattr(gateway.cli, "parse", parse)
    gc.collect()
    before = sum(isinstance(o, argparse.ArgumentParser) for o in gc.get_objects())
    assert main(["routes", "list"]) == 0
    assert alive == [before]


def test_a_reader_that_went_away_gets_no_traceback() -> None:
    # `peel config show 3 | head -2`: the reader closes the pipe before the output is written
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "gateway.cli", "native", "status"], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (1, "")
