"""How many threads each decode step runs, chosen from the steps' own timings.

llama.cpp's worker threads wait for each other at every operation of a step. On a quiet machine
every core is worth a thread; when something else takes CPU time (a busy neighbour on a shared
host), one thread loses its turn and the others wait for it, so a step with fewer threads finishes
sooner (measured with bench.contention on 2 vCPU beside one busy process: 2 threads fell to
0.3-0.5x of their quiet rate, 1 thread kept 0.9-1.0x). The tuner keeps the count that is faster
*now*: a probe interleaves ``probe_pairs`` steps at a neighbouring count with steps at the current
one, compares pairs of equal batch size, and moves when the neighbour was faster by ``margin`` in
total and in all but one pair. A probe runs every ``probe_every`` steps (a quarter of that below
the full count, to notice when the neighbour has gone) and at once when four steps in a row took
``slowdown`` times their usual time (learnt again after each probe, from at least 8 steps). Its
cost is its few steps at the other count. Only decode steps are tuned; the scheduler runs steps
that carry prompt tokens with every thread.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

SLOW_STEPS = 4
LEARN_STEPS = 8  # steps of a batch size seen since the last probe before their usual time counts


@dataclass
class ThreadTuner:
    max_threads: int
    probe_every: int = 256
    probe_pairs: int = 3
    margin: float = 0.10
    slowdown: float = 1.3
    current: int = 0
    probes: int = 0
    switches: int = 0
    _since_probe: int = 0
    _direction: int = -1
    _plan: list[int] = field(default_factory=list)
    _seen: list[tuple[int, int, float]] = field(default_factory=list)  # (threads, rows, seconds) of a probe
    _usual: dict[int, tuple[int, float]] = field(default_factory=dict)  # rows -> (steps seen, usual seconds)
    _slow: deque[bool] = field(default_factory=lambda: deque(maxlen=SLOW_STEPS))

    def __post_init__(self) -> None:
        self.current = self.current or self.max_threads

    def next_step(self) -> int:
        """Threads for the coming step."""
        if not self._plan and self.max_threads > 1 and self._probe_due():
            other = self._neighbour()
            self._plan = [self.current, other] * self.probe_pairs
            self._seen = []
        return self._plan[len(self._seen)] if self._plan else self.current

    def record(self, threads: int, rows: int, seconds: float) -> None:
        """What the step just run cost: ``rows`` tokens in the batch, with ``threads`` threads."""
        if self._plan:
            self._seen.append((threads, rows, seconds))
            if len(self._seen) == len(self._plan):
                self._decide()
            return
        self._since_probe += 1
        seen, usual = self._usual.get(rows, (0, seconds))
        self._slow.append(seen >= LEARN_STEPS and seconds > usual * self.slowdown)
        self._usual[rows] = (seen + 1, 0.9 * usual + 0.1 * seconds)

    def _probe_due(self) -> bool:
        every = self.probe_every if self.current == self.max_threads else self.probe_every // 4
        return self._since_probe >= every or (len(self._slow) == SLOW_STEPS and all(self._slow))

    def _neighbour(self) -> int:
        # Alternate directions, staying within 1..max_threads.
        for direction in (self._direction, -self._direction):
            other = self.current + direction
            if 1 <= other <= self.max_threads:
                self._direction = -direction
                return other
        return self.current

    def _decide(self) -> None:
        here = there = 0.0
        pairs = wins = 0
        for (t1, rows1, s1), (t2, rows2, s2) in zip(self._seen[::2], self._seen[1::2], strict=True):
            if rows1 == rows2 and t1 == self.current and t2 != self.current:
                here += s1
                there += s2
                pairs += 1
                wins += s2 < s1
        other = self._plan[1]
        self.probes += 1
        self._plan, self._seen, self._since_probe = [], [], 0
        self._slow.clear()
        self._usual.clear()  # what is usual is learnt again, under the conditions of now
        # Move only on a clear result: faster by the margin in total and in all but one pair.
        if pairs >= 2 and wins >= pairs - 1 and there < here * (1 - self.margin):
            self.current = other
            self.switches += 1
