"""`bench/run.py --profile FILE`: where a Peel worker's CPU goes under the c50 load.

py-spy samples the serving process (`--subprocesses`: every worker) while `wrk -t1 -c50` runs
against it; the raw folded stacks go to FILE (open them with speedscope or `flamegraph.pl`), and a
summary is printed: the share of samples by layer (inclusive: a sample counts for every layer on its
stack) and the functions with the most samples of their own (self time). py-spy leaves out idle
threads, so the shares are of busy time; the event loop's own C code (uvloop) shows as `Runner.run`.

This is the profile the closing notes of speed work quote: it says which layer a change has to take
out of the path, before any benchmark says whether it did.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

# A frame as py-spy writes it in folded stacks: "function (path/to/file.py:LINE)".
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:]*)(?::\d+)?\)$")

# Layers by where a frame's file lives, first match wins (order: most specific first).
LAYERS: tuple[tuple[str, str], ...] = (
    ("uvicorn", "/uvicorn/"),
    ("starlette", "/starlette/"),
    ("opentelemetry", "/opentelemetry/"),
    ("asyncio", "/asyncio/"),
    ("peel edge", "gateway/edge/"),
    ("peel http", "gateway/http/"),
    ("peel dataplane", "gateway/dataplane/"),
    ("peel upstream", "gateway/upstream/"),
    ("peel telemetry", "gateway/telemetry/"),
    ("peel policy", "gateway/policy/"),
    ("peel routes", "routes/"),
    ("peel facade", "facade/"),
)
_IDLE = ("select", "poll", "epoll", "_run_once", "run_forever", "wait")


def layer(path: str) -> str | None:
    path = "/" + path  # py-spy names site-packages files from the package: "uvicorn/..."
    for name, marker in LAYERS:
        if "/" + marker.strip("/") + "/" in path:
            return name
    return None


def summarise(folded: str, top: int = 25) -> str:
    """The report of a py-spy raw (folded) profile: layers' inclusive shares, top self times."""
    busy = idle = 0
    layers: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    own_layers: collections.Counter[str] = collections.Counter()
    for line in folded.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        leaf = frames[-1]
        match = _FRAME.match(leaf)
        leaf_func = match.group("func") if match else leaf
        if leaf_func in _IDLE and len(frames) <= 6:
            idle += count
            continue
        busy += count
        seen = set()
        for frame in frames:
            m = _FRAME.match(frame)
            name = layer(m.group("file")) if m else None
            if name is not None and name not in seen:
                seen.add(name)
                layers[name] += count
        own_layers[(layer(match.group("file")) if match else None) or "other (C, stdlib)"] += count
        if match:
            short = match.group("file").rsplit("site-packages/", 1)[-1].rsplit("/main/", 1)[-1]
            own[f"{leaf_func} ({short})"] += count
        else:
            own[leaf] += count
    if not busy:
        return "profile: no busy samples (is py-spy allowed to read the process?)\n"
    lines = [f"profile: {busy:,} busy samples, {idle:,} idle ({busy / max(1, busy + idle):.0%} busy)\n",
             "share of busy samples by layer (inclusive):"]
    for name, count in layers.most_common():
        lines.append(f"  {count / busy:6.1%}  {name}")
    lines.append("\nshare of busy samples by layer (own: the frame on top of the stack):")
    for name, count in own_layers.most_common():
        lines.append(f"  {count / busy:6.1%}  {name}")
    lines.append(f"\ntop {top} functions by own samples:")
    for name, count in own.most_common(top):
        lines.append(f"  {count / busy:6.1%}  {name}")
    return "\n".join(lines) + "\n"


def record(pid: int, out: Path, seconds: int, load: Callable[[], object], rate: int = 250) -> str:
    """Sample `pid` (and its children) with py-spy while `load()` runs; the summary of what it saw."""
    # the venv's py-spy (a dev dependency), else one on PATH
    beside = Path(sys.executable).with_name("py-spy")
    tool = str(beside) if beside.exists() else shutil.which("py-spy")
    if tool is None:
        return "profile: py-spy not found (pip install py-spy: it is in the dev extra)\n"
    spy = subprocess.Popen([tool, "record", "--pid", str(pid), "--subprocesses", "--format", "raw",
                            "--rate", str(rate), "--duration", str(seconds + 1), "--nonblocking",
                            "--output", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    worker = threading.Thread(target=load)
    worker.start()
    worker.join()
    _, err = spy.communicate(timeout=seconds + 30)
    if spy.returncode != 0 or not out.exists():
        return f"profile: py-spy failed ({spy.returncode}): {err.decode(errors='replace').strip()[-300:]}\n"
    return summarise(out.read_text())
