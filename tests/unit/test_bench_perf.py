"""bench/perf.py: `perf script` output read, each sample given to its innermost compiled function."""

from __future__ import annotations

from bench.perf import summarise

SO = "/work/main/.venv/lib/peel-native/6adcee101b2d0bc5f64e__mypyc.cpython-311-x86_64-linux-gnu.so"
PY = "/usr/lib/libpython3.11.so.1.0"
LOOP = "/x/uvloop/loop.cpython-311-x86_64-linux-gnu.so"

SCRIPT = f"""python  3819 28979.251031:    1001001 cpu-clock:ppp:
\t          ffffffff81 _raw_spin_unlock_irqrestore+0x1d ([kernel.kallsyms])
\t          ffffffff82 sock_def_readable+0x40 ([kernel.kallsyms])
\t          1e0cca CPyDef_writes___BatchedWriter___flush+0xa ({SO})
\t          1e0ce7 CPyDef_writes___WriteBatch___flush+0x17 ({SO})

python  3819 28979.252031:    1001001 cpu-clock:ppp:
\t          158cc7 _PyObject_VectorcallTstate+0x77 (inlined)
\t          158cc7 PyObject_VectorcallMethod+0x77 ({PY})
\t          a4e93 __pyx_pw_6uvloop_4loop_4Loop_25run_forever+0x2f3 ({LOOP})

python  3819 28979.253031:    1001001 cpu-clock:ppp:
\t          caa51 pymalloc_alloc+0x11 ({PY})
\t          cbfed CPyDef_http1___parse_head+0x29d ({SO})
\t          cbfee CPyDef_http1___ResponseReader____feed_head+0x1 ({SO})
\t          cbfef CPyDef_pool___UpstreamConnection___data_received+0x2 ({SO})

python  3819 28979.254031:    1001001 cpu-clock:ppp:
\t          cbfee CPyDef_http1___ResponseReader____feed_head+0x1f ({SO})
\t          cbfef CPyDef_pool___UpstreamConnection___data_received+0x2 ({SO})
"""


def share(report: str, section: str, name: str) -> str:
    """The share printed for `name` in the report's section starting with `section`."""
    part = report.split(section, 1)[1].split("\n\n", 1)[0]
    line = next(line for line in part.splitlines() if line.endswith("  " + name))
    return line.split()[0]


def test_each_sample_goes_to_its_innermost_compiled_function() -> None:
    report = summarise(SCRIPT)
    assert report.startswith("perf: 4 samples")
    innermost = "top 40 by the innermost"
    assert share(report, innermost, "writes___BatchedWriter___flush") == "25.0%"  # the kernel's send in it
    assert share(report, innermost, "http1___parse_head") == "25.0%"  # with the allocator it calls
    assert share(report, innermost, "http1___ResponseReader____feed_head") == "25.0%"
    # no compiled Peel function on the stack: the top frame's library, an inlined frame placed
    assert share(report, innermost, "(outside Peel: libpython3.11.so.1.0)") == "25.0%"
    inclusive = "compiled functions, inclusive"
    assert share(report, inclusive, "http1___ResponseReader____feed_head") == "50.0%"
    assert share(report, inclusive, "pool___UpstreamConnection___data_received") == "50.0%"
    libraries = "by the library of the top frame"
    assert share(report, libraries, "[kernel.kallsyms]") == "25.0%"
    assert share(report, libraries, "libpython3.11.so.1.0") == "50.0%"


def test_no_samples_says_why() -> None:
    assert "no samples" in summarise("")
