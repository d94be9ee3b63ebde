"""ThreadTuner: which thread count each step runs with, from step costs the test scripts."""

from __future__ import annotations

from collections.abc import Callable

from spaceserve.engine.threads import ThreadTuner


def drive(tuner: ThreadTuner, steps: int, cost: Callable[[int, int], float], rows: Callable[[int], int]) -> list[int]:
    """Run ``steps`` steps; ``cost(threads, rows)`` is what a step takes. Returns the threads used."""
    used = []
    for i in range(steps):
        threads = tuner.next_step()
        used.append(threads)
        tuner.record(threads, rows(i), cost(threads, rows(i)))
    return used


def quiet(threads: int, rows: int) -> float:
    return 0.010 * rows / threads + 0.004  # two threads faster


def contended(threads: int, rows: int) -> float:
    return 2.5 * quiet(threads, rows) if threads > 1 else quiet(2, rows)  # a busy neighbour: one thread faster


def test_quiet_machine_keeps_every_thread_and_probes_only_a_few_steps() -> None:
    tuner = ThreadTuner(2, probe_every=16, probe_pairs=4)
    used = drive(tuner, 16 * 10, quiet, lambda i: 1)
    assert tuner.current == 2 and tuner.switches == 0
    assert tuner.probes >= 5
    assert used.count(1) == 4 * tuner.probes  # only the probes' own steps ran with one thread


def test_contention_moves_to_fewer_threads_and_back_when_it_ends() -> None:
    tuner = ThreadTuner(2, probe_every=16, probe_pairs=4)
    drive(tuner, 40, contended, lambda i: 4)
    assert tuner.current == 1 and tuner.switches == 1
    drive(tuner, 60, contended, lambda i: 4)
    assert tuner.current == 1  # probes of two threads keep losing
    drive(tuner, 40, quiet, lambda i: 4)
    assert tuner.current == 2 and tuner.switches == 2


def test_a_sudden_slowdown_probes_at_once_instead_of_waiting_for_the_period() -> None:
    tuner = ThreadTuner(2, probe_every=1000, probe_pairs=3)
    drive(tuner, 50, quiet, lambda i: 4)
    assert tuner.probes == 0
    used = drive(tuner, 4 + 6, contended, lambda i: 4)  # four slow steps, then a probe of three pairs
    assert tuner.probes == 1 and tuner.current == 1
    assert used[4:] == [2, 1] * 3
    # Below the full count it looks again a quarter as often, and goes back once the neighbour left.
    drive(tuner, 250 + 6, quiet, lambda i: 4)
    assert tuner.current == 2


def test_a_lasting_slowdown_that_fewer_threads_do_not_help_does_not_probe_every_step() -> None:
    tuner = ThreadTuner(2, probe_every=1000, probe_pairs=3)
    drive(tuner, 20, lambda threads, rows: 0.010, lambda i: 1)
    drive(tuner, 200, lambda threads, rows: 0.020 if threads == 2 else 0.030, lambda i: 1)
    assert tuner.probes == 1 and tuner.current == 2


def test_steps_of_different_batch_sizes_are_not_compared() -> None:
    # One thread looks faster only because its steps had fewer rows: no pair matches, no move.
    tuner = ThreadTuner(2, probe_every=8, probe_pairs=4)
    drive(tuner, 8, quiet, lambda i: 8)
    schedule: list[int] = []

    def rows(i: int) -> int:
        return 1 if schedule[-1] == 1 else 8

    for i in range(8):
        threads = tuner.next_step()
        schedule.append(threads)
        tuner.record(threads, rows(i), quiet(threads, rows(i)) if threads == 2 else 0.001)
    assert tuner.probes == 1 and tuner.current == 2


def test_a_small_difference_within_the_margin_does_not_move() -> None:
    tuner = ThreadTuner(2, probe_every=8, probe_pairs=4, margin=0.10)
    drive(tuner, 40, lambda threads, rows: 0.010 if threads == 2 else 0.0095, lambda i: 2)
    assert tuner.current == 2 and tuner.probes >= 2


def test_one_thread_never_probes() -> None:
    tuner = ThreadTuner(1, probe_every=4)
    assert set(drive(tuner, 40, contended, lambda i: 1)) == {1}
    assert tuner.probes == 0


def test_more_cores_walk_to_the_fastest_count_one_step_at_a_time() -> None:
    # Four cores, two of them taken by neighbours: two threads is the fastest.
    def cost(threads: int, rows: int) -> float:
        return {1: 0.020, 2: 0.012, 3: 0.030, 4: 0.040}[threads]

    tuner = ThreadTuner(4, probe_every=8, probe_pairs=4)
    drive(tuner, 400, cost, lambda i: 1)
    assert tuner.current == 2
