"""Stage scheduling: the stages a build needs, wave by wave (`BuildPlan.levels()`: a
wave needs only earlier ones), the stages of one wave at the same time.

One thread per stage of a wave besides the calling one: a RUN waits for its sandbox
child and a layer is hashed and compressed outside the GIL, so two independent stages
take about as long as the longer one. A failure is raised once the wave has ended
(the first in file order); an interrupt (Ctrl-C, SIGTERM: the main thread) stops the
other stages' running steps - their processes are this one's children - and waits
for their cleanup. What building one stage means is builder.executor's.
"""

from __future__ import annotations

import os
import threading
from typing import Callable, Iterable

__all__ = ["build_in_waves", "kill_children"]


def build_in_waves(waves: Iterable[tuple[int, ...]], build_stage: Callable[[int], None]) -> None:
    """Call `build_stage(index)` for every stage index of `waves`, a wave after the
    previous one has ended, the stages of one wave in parallel threads."""
    for wave in waves:
        if len(wave) == 1:
            build_stage(wave[0])
        else:
            _build_wave(wave, build_stage)


def _build_wave(wave: tuple[int, ...], build_stage: Callable[[int], None]) -> None:
    # modules a step's child process imports lazily: imported here, before any other
    # thread can hold their import locks while a fork copies them
    import lamina.builder.steps.add  # noqa: F401
    import lamina.builder.steps.reuse  # noqa: F401
    from lamina.builder.sandbox.overlay import finalize_upper  # noqa: F401

    failures: dict[int, BaseException] = {}

    def work(index: int) -> None:
        try:
            build_stage(index)
        except BaseException as e:  # noqa: BLE001 - raised by the main thread
            failures[index] = e

    threads = [threading.Thread(target=work, args=(index,), daemon=True,
                                name=f"lamina-stage-{index}") for index in wave[1:]]
    for t in threads:
        t.start()
    try:
        work(wave[0])
        if isinstance(failures.get(wave[0]), KeyboardInterrupt):
            raise failures.pop(wave[0])
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except BaseException:
        kill_children()
        for t in threads:
            t.join()
        raise
    for index in wave:
        if index in failures:
            raise failures[index]


def kill_children() -> None:
    """SIGKILL every child process of this one (the running steps of the other stages
    of a wave, when the build is interrupted or fails); their threads then clean up."""
    import signal

    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            try:
                os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass
