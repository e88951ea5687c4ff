"""Rule documents as text: YAML (or JSON, which is YAML too) read from a file or stdin, YAML printed."""

from __future__ import annotations

import sys
from typing import Any

import yaml

from routes.errors import PeelError


def dump_yaml(data: Any) -> str:
    """Stable YAML in the key order given (the model's canonical order), never folded."""
    return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True,
                              width=1 << 16))


def load_document(path: str) -> Any:
    """YAML or JSON (a JSON text is YAML too) from a file, or stdin for `-`."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except OSError as exc:
        raise PeelError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PeelError(f"{path} is not UTF-8 text") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PeelError(f"{'stdin' if path == '-' else path} is not valid YAML or JSON: {exc}") from None
