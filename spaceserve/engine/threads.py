"""How many threads each decode step runs, chosen from the steps' own timings.

llama.cpp's worker threads wait for each other at every operation of a step. On a quiet machine
every core is worth a thread; when something else takes CPU time (a busy neighbour on a shared
host), one thread loses its turn and the others wait for it, so a step with fewer threads finishes
sooner (measured with bench.contention on 2 vCPU beside one busy process: 2 threads fell to 0.31-0.45x
of their quiet rate, 1 thread kept 0.94x). The tuner keeps the count that is faster *now*: every
``probe_every`` steps it interleaves ``probe_pairs`` steps at a neighbouring count with steps at the
current one, compares pairs of equal batch size, and moves when the neighbour was faster by
``margin`` in total and in all but one pair. The probe's cost is its few steps at the other count
(about 3 % when that count is twice as slow). Only decode steps are tuned; the scheduler runs
steps that carry prompt tokens with every thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ThreadTuner:
    max_threads: int
    probe_every: int = 128
    probe_pairs: int = 4
    margin: float = 0.10
    current: int = 0
    probes: int = 0
    switches: int = 0
    _since_probe: int = 0
    _direction: int = -1
    _plan: list[int] = field(default_factory=list)
    _seen: list[tuple[int, int, float]] = field(default_factory=list)  # (threads, rows, seconds) of a probe

    def __post_init__(self) -> None:
        self.current = self.current or self.max_threads

    def next_step(self) -> int:
        """Threads for the coming step."""
        if not self._plan and self.max_threads > 1 and self._since_probe >= self.probe_every:
            other = self._neighbour()
            self._plan = [self.current, other] * self.probe_pairs
            self._seen = []
        return self._plan[len(self._seen)] if self._plan else self.current

    def record(self, threads: int, rows: int, seconds: float) -> None:
        """What the step just run cost: ``rows`` tokens in the batch, with ``threads`` threads."""
        if not self._plan:
            self._since_probe += 1
            return
        self._seen.append((threads, rows, seconds))
        if len(self._seen) == len(self._plan):
            self._decide()

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
        # Move only on a clear result: faster by the margin in total and in all but one pair.
        if pairs >= 2 and wins >= pairs - 1 and there < here * (1 - self.margin):
            self.current = other
            self.switches += 1
