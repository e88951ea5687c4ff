"""The demo's strangler walkthrough: every `peel` command it prints is one the CLI accepts."""

from __future__ import annotations

import re
import shlex

from gateway.cli import build_parser
from gateway.demo.walkthrough import strangler_steps


def test_every_printed_peel_command_parses() -> None:
    lines = strangler_steps("peel", "http://localhost:18080")
    commands = []
    for line in lines:
        # without the step label ("a. "); comments after `#` dropped
        words = shlex.split(re.sub(r"^\s*[a-z]\.\s+", "", line), comments=True)
        if words[:1] == ["peel"] and "|" not in words:
            commands.append(words[1:])
    assert {c[0] + " " + c[1] for c in commands} >= {
        "migrate start", "migrate shift", "migrate promote", "migrate rollback", "migrate status",
        "migrate history", "beta sign"}
    parser = build_parser()
    for args in commands:
        parser.parse_args(args)
