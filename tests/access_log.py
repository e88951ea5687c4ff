"""Reading a running gateway's access log from a test.

The writer thread appends a batch of lines with one `write`, and a reader on another process may
see the first part of it only (the file grows page by page while the write copies): a test that
polls the log reads the lines that are whole, up to the last newline, and leaves the rest for its
next look.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def whole_lines(path: Path) -> list[str]:
    """The complete lines of `path` (none while it does not exist), a torn last line left out."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return text[:text.rfind("\n") + 1].splitlines()


def records(path: Path) -> list[dict[str, Any]]:
    """The access log's complete lines, each decoded."""
    return [json.loads(line) for line in whole_lines(path)]
