"""`bench/run.py --perf FILE`: where the compiled request path's CPU goes, by the kernel's sampler.

`--profile` (py-spy, bench/profile.py) sees Python frames; since the request path is compiled with
mypyc (`make native`), its functions are C functions that py-spy cannot name. `perf record` can:
it samples the serving process (`-F 999`, call graphs unwound from the stack, `dwarf`) while `wrk
-t1 -c50` runs against it, the raw data goes to FILE (`perf report -i FILE` reads it), and a
summary is printed from `perf script`:

- each sample is given to the innermost compiled Peel function on its stack (a mypyc symbol,
  `CPyDef_<module>___<function>`): that function's own work with the interpreter, C library and
  kernel code it calls, which is what a change to that function can take away. A sample with no
  compiled Peel function on its stack is "outside Peel", by the library its top frame is in (the
  event loop, the interpreter, the kernel);
- the inclusive share of each compiled function (a sample counts for every one on its stack);
- the share by the library of the top frame (the kernel, the interpreter, the compiled modules).

This is the profile the closing notes of the speed issue (16) quote since the path was compiled.
It needs `perf` (Debian's linux-perf) and the right to trace the process (root, or
`kernel.perf_event_paranoid` <= 1).
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

# A frame line of `perf script`: "\t    7f1c2a3b4c5d CPyDef_http1___parse_head+0x12f (/path/x.so)".
_FRAME = re.compile(r"^\s+[0-9a-f]+ (?P<symbol>.*?)(?:\+0x[0-9a-f]+)? \((?P<dso>[^)]*)\)$")
_COMPILED = re.compile(r"^CPy(?:Def|Py)_(?P<name>.+)$")


def _samples(script: str) -> list[list[tuple[str, str]]]:
    """The stacks of `perf script` output, innermost frame first: (symbol, library file name)."""
    samples: list[list[tuple[str, str]]] = []
    frames: list[tuple[str, str]] = []
    for line in script.splitlines():
        if not line.strip():
            if frames:
                samples.append(frames)
                frames = []
            continue
        match = _FRAME.match(line)
        if match is not None:
            frames.append((match.group("symbol"), match.group("dso").rsplit("/", 1)[-1]))
    if frames:
        samples.append(frames)
    return [_placed(frames) for frames in samples]


def _placed(frames: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """An inlined frame (perf names its library "inlined") gets the library of the frame it was
    inlined into: the next one below it that is not inlined."""
    placed: list[tuple[str, str]] = []
    below = "?"
    for symbol, library in reversed(frames):
        if library == "inlined":
            library = below
        else:
            below = library
        placed.append((symbol, library))
    placed.reverse()
    return placed


def summarise(script: str, top: int = 40) -> str:
    """The report of `perf script` output: the innermost compiled Peel function of each sample,
    compiled functions inclusive, and the top frames' libraries."""
    samples = _samples(script)
    if not samples:
        return "perf: no samples (is perf allowed to trace the process?)\n"
    innermost: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    libraries: collections.Counter[str] = collections.Counter()
    for frames in samples:
        libraries[frames[0][1]] += 1
        first: str | None = None
        seen: set[str] = set()
        for symbol, _ in frames:
            match = _COMPILED.match(symbol)
            if match is None:
                continue
            name = match.group("name")
            if first is None:
                first = name
            if name not in seen:
                seen.add(name)
                inclusive[name] += 1
        innermost[first if first is not None else f"(outside Peel: {frames[0][1]})"] += 1
    total = len(samples)
    lines = [f"perf: {total:,} samples of the serving process",
             f"\ntop {top} by the innermost compiled Peel function (its own work and what it calls):"]
    lines += [f"  {count / total:6.1%}  {name}" for name, count in innermost.most_common(top)]
    lines.append(f"\ntop {top} compiled functions, inclusive:")
    lines += [f"  {count / total:6.1%}  {name}" for name, count in inclusive.most_common(top)]
    lines.append("\nby the library of the top frame:")
    lines += [f"  {count / total:6.1%}  {name}" for name, count in libraries.most_common(12)]
    return "\n".join(lines) + "\n"


def record(pid: int, out: Path, seconds: int, load: Callable[[], object]) -> str:
    """Sample `pid` with perf while `load()` runs (started first, sampled after a second's ramp);
    the summary of what it saw."""
    tool = shutil.which("perf")
    if tool is None:
        return "perf: not found (Debian: apt-get install linux-perf)\n"
    worker = threading.Thread(target=load)
    worker.start()
    worker.join(1.0)
    recorded = subprocess.run([tool, "record", "-F", "999", "--call-graph", "dwarf,16384", "-o", str(out),
                               "-p", str(pid), "--", "sleep", str(max(1, seconds - 2))],
                              capture_output=True, text=True, check=False)
    worker.join()
    if recorded.returncode != 0 or not out.exists():
        return f"perf: record failed ({recorded.returncode}): {recorded.stderr.strip()[-300:]}\n"
    script = subprocess.run([tool, "script", "-i", str(out)], capture_output=True, text=True,
                            errors="replace", check=False)
    if script.returncode != 0:
        return f"perf: script failed ({script.returncode}): {script.stderr.strip()[-300:]}\n"
    return summarise(script.stdout)
