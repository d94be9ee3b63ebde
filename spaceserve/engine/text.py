"""Turning token bytes into text deltas: incremental UTF-8 and stop strings across token boundaries."""

from __future__ import annotations

import codecs


class TextStream:
    """Feeds token bytes, yields text that is safe to send.

    Text that could be the start of a stop string is held back until it is known not to be;
    bytes of an incomplete UTF-8 character are held back until the character is complete.
    """

    def __init__(self, stop: list[str]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = [s for s in stop if s]
        self._pending = ""
        self.stopped = False

    def feed(self, data: bytes) -> str:
        """Return the text that can be emitted now; sets ``stopped`` when a stop string appeared."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(data)
        if not self._stop:
            out, self._pending = self._pending, ""
            return out
        cut = min((i for i in (self._pending.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            out = self._pending[:cut]
            self._pending = ""
            self.stopped = True
            return out
        hold = self._partial_stop_length()
        end = len(self._pending) - hold
        out, self._pending = self._pending[:end], self._pending[end:]
        return out

    def flush(self) -> str:
        """At the end of generation: everything still held, since no stop string can complete now."""
        if self.stopped:
            return ""
        out = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        return out

    def _partial_stop_length(self) -> int:
        text = self._pending
        best = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:size]):
                    best = size
                    break
        return best
