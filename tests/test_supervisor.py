"""One supervisor for every child: restarts with backoff, a give-up that sticks, stale words dropped."""

from __future__ import annotations

import asyncio
import os

import pytest

from bridge.supervisor import RestartPolicy, SupervisedChild


def say_then_exit(conn, code: int) -> None:
    """A child that says who it is and dies at once (crash loop)."""
    conn.send({"op": "hello", "pid": os.getpid()})
    conn.close()
    os._exit(code)


def test_backoff_grows_caps_and_resets() -> None:
    p = RestartPolicy(first_delay_s=0.5, factor=2, max_delay_s=3)
    assert [p.delay(n) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_a_crashing_child_is_restarted_with_backoff_until_given_up() -> None:
    async def run() -> tuple[list, list, SupervisedChild]:
        loop = asyncio.get_running_loop()
        hellos: list[int] = []
        exits: list[tuple[int | None, float | None]] = []
        done = asyncio.Event()
        child: SupervisedChild

        def on_message(msg: dict) -> None:
            hellos.append(msg["pid"])
            if len(hellos) == 4:
                child.give_up()  # e.g. the model said its file cannot load

        def on_exit(code: int | None, restart_in: float | None) -> None:
            exits.append((code, restart_in))
            if restart_in is None:
                done.set()

        child = SupervisedChild("crasher", say_then_exit, (3,), loop, on_message=on_message, on_exit=on_exit,
                                policy=RestartPolicy(first_delay_s=0.05, factor=2, max_delay_s=0.15))
        child.start()
        await asyncio.wait_for(done.wait(), 60)
        child.stop()
        return hellos, exits, child

    hellos, exits, child = asyncio.run(run())
    assert len(set(hellos)) == 4, "every restart is a new process"
    assert exits == [(3, 0.05), (3, 0.1), (3, pytest.approx(0.15)), (3, None)]
    assert child.restarts == 3 and not child.alive


def test_stop_silences_the_child_and_cancels_a_pending_restart() -> None:
    async def run() -> list:
        loop = asyncio.get_running_loop()
        exits: list = []
        first_exit = asyncio.Event()

        def on_exit(code: int | None, restart_in: float | None) -> None:
            exits.append(restart_in)
            first_exit.set()

        child = SupervisedChild("crasher", say_then_exit, (1,), loop, on_message=lambda m: None, on_exit=on_exit,
                                policy=RestartPolicy(first_delay_s=0.3))
        child.start()
        await asyncio.wait_for(first_exit.wait(), 60)
        generation = child.generation
        child.stop()  # before the restart is due
        assert child.generation > generation, "words of the stopped child are dropped"
        await asyncio.sleep(0.5)  # past the restart that must not come (nothing to await: it is cancelled)
        assert not child.alive
        return exits

    assert asyncio.run(run()) == [0.3]
