"""Work in steps (`routes.steps`): all at once, or on the event loop with the loop free between
steps, so that a request in flight meets one step of a change, not all of them."""

from __future__ import annotations

import asyncio

from routes.steps import Steps, map_steps, run, run_on_loop, split_steps


def counted(marks: list[str], parts: int) -> Steps[int]:
    for n in range(parts):
        marks.append(f"step {n}")
        yield
    marks.append(f"step {parts}")
    return parts


def test_run_does_every_step_and_returns_the_result() -> None:
    marks: list[str] = []
    assert run(counted(marks, 3)) == 3
    assert marks == ["step 0", "step 1", "step 2", "step 3"]


def test_passes_in_steps_equal_the_pass_in_one() -> None:
    assert run(map_steps(str, range(10), per_step=3)) == [str(n) for n in range(10)]
    text = ",".join(map(str, range(100)))
    assert run(split_steps(text, ",", per_step=7)) == text.split(",")


def test_on_the_loop_a_task_of_several_turns_meets_one_step_not_all() -> None:
    """A request is several turns of the loop, each after some I/O (here a short sleep); the
    steps of a change leave the loop `gap` seconds between them, so the request's turns all run
    between two steps. With no gap the steps run while the request waits for its I/O."""

    async def scenario(gap: float) -> list[str]:
        marks: list[str] = []

        async def request() -> None:
            for turn in range(3):
                await asyncio.sleep(0.001)  # the upstream's answer, say
                marks.append(f"request turn {turn}")

        async def both() -> None:
            change = asyncio.ensure_future(run_on_loop(counted(marks, 4), gap=gap))
            await asyncio.sleep(0)  # the change's first step runs
            await request()
            assert await change == 4

        await both()
        return marks

    spaced = asyncio.run(scenario(gap=0.2))  # far more than 3 ms, even on a loaded machine
    turns = [i for i, mark in enumerate(spaced) if mark.startswith("request")]
    assert spaced[:1] == ["step 0"]
    assert turns == [1, 2, 3]  # the request's three turns ran between step 0 and step 1
    assert spaced[4:] == ["step 1", "step 2", "step 3", "step 4"]

    back_to_back = asyncio.run(scenario(gap=0))
    turns = [i for i, mark in enumerate(back_to_back) if mark.startswith("request")]
    assert turns[0] > 1  # without a gap, steps ran while the request waited for its I/O
