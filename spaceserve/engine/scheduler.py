"""Continuous batching over one llama.cpp context.

One thread owns the context. Each step it builds one ``llama_batch`` holding the next token of
every generating sequence plus a chunk of pending prompt tokens, calls ``llama_decode`` once,
and samples every sequence that produced logits. Requests join between steps and leave as soon
as they finish, are cancelled or pass their deadline, without stalling the others.

Each slot is one sequence id with its own KV stream. A slot keeps its tokens after its request
ends, so a later request that starts with the same tokens (a long system prompt, a growing chat)
reuses them; a prefix held by another slot is copied in with ``llama_memory_seq_cp``, a buffer
copy far cheaper than evaluating the prefix again. See ARCHITECTURE.md for the whole flow.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import llama_cpp

from ..base.errors import APIError, InternalError, RateLimited, ServiceUnavailable
from .model import LoadedModel
from .sampling import Sampler
from .text import TextStream
from .types import Failed, Finished, FinishReason, GenerationRequest, TextDelta

log = logging.getLogger("spaceserve.scheduler")

IDLE_WAIT = 0.25  # seconds the loop sleeps when idle before checking deadlines again
# Copying another slot's KV stream moves the whole stream buffer; below this many extra reused
# tokens, evaluating them again is cheaper.
MIN_COPY_GAIN = 32


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV is in this sequence
    request: GenerationRequest | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens still to evaluate
    sampler: Sampler | None = None
    text: TextStream | None = None
    last_token: int = -1
    generated: int = 0
    reused: int = 0
    started_at: float = 0.0
    first_token_at: float = 0.0
    batch_index: int = -1
    reserved: int = 0  # KV cells the request may grow to (prompt + max_tokens), counted in a pool

    @property
    def busy(self) -> bool:
        return self.request is not None


class QueueFull(RateLimited):
    pass


class Scheduler:
    def __init__(self, model: LoadedModel, *, max_queue: int, end_tokens: set[int]) -> None:
        self.model = model
        self.max_queue = max_queue
        self.end_tokens = end_tokens
        self.slots = [Slot(i) for i in range(model.shape.slots)]
        self._waiting: deque[GenerationRequest] = deque()
        self._cond = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        self._batch = llama_cpp.llama_batch_init(model.shape.batch, 0, 1)
        self._avg_request_s = 5.0  # moving average, for Retry-After

    # -- called from the event loop -------------------------------------------------------

    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="llama-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
        llama_cpp.llama_batch_free(self._batch)

    @property
    def active(self) -> int:
        return sum(1 for slot in self.slots if slot.busy)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def submit(self, request: GenerationRequest) -> None:
        with self._cond:
            free = len(self.slots) - self.active
            if len(self._waiting) >= free + self.max_queue:
                raise QueueFull(
                    f"the server is at capacity ({len(self.slots)} running, {len(self._waiting)} queued); retry later",
                    code="queue_full",
                    headers={"Retry-After": str(self.retry_after())},
                )
            self._waiting.append(request)
            self._cond.notify()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def retry_after(self) -> int:
        waves = (len(self._waiting) + 1) / max(1, len(self.slots))
        return max(1, math.ceil(waves * self._avg_request_s))

    # -- the scheduler thread --------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._running:
                    break
                self._expire_waiting()
                self._admit()
                if not any(slot.busy for slot in self.slots):
                    self._cond.wait(IDLE_WAIT)
                    continue
            try:
                self._step()
            except Exception:  # never let one bad step kill the server
                log.exception("decode step failed")
                for slot in self.slots:
                    if slot.busy:
                        self._fail(slot, InternalError("generation failed inside the engine"))
                llama_cpp.llama_memory_clear(self.model.memory, True)
                for slot in self.slots:
                    slot.cached = []
        for slot in self.slots:
            if slot.busy:
                self._fail(slot, ServiceUnavailable("the server is shutting down", code="shutting_down"))

    def _expire_waiting(self) -> None:
        now = time.monotonic()
        keep: deque[GenerationRequest] = deque()
        for request in self._waiting:
            if request.cancelled:
                continue
            if now >= request.deadline:
                request.emit(
                    Failed(
                        ServiceUnavailable(
                            "the request's deadline passed while it waited for a free slot",
                            code="timeout",
                            headers={"Retry-After": str(self.retry_after())},
                        )
                    )
                )
                continue
            keep.append(request)
        self._waiting = keep

    def _admit(self) -> None:
        while self._waiting:
            free = [slot for slot in self.slots if not slot.busy]
            if not free or not self._make_room(self._waiting[0], free):
                return  # first come, first served: the head waits for a slot or for cells
            request = self._waiting.popleft()
            try:
                self._seat(request, free)
            except Exception:
                log.exception("could not start a request")
                request.emit(Failed(InternalError("the engine could not start this request")))

    def _reservation(self, request: GenerationRequest) -> int:
        return min(len(request.prompt) + request.max_tokens, self.model.shape.per_slot)

    def _make_room(self, request: GenerationRequest, free: list[Slot]) -> bool:
        """In a shared KV pool, admit a request only when all it may grow to fits beside what the
        running requests may grow to, so no running reply is ever cut for room. Idle slots' cached
        prefixes give way, the least useful to this prompt first."""
        shape = self.model.shape
        if not shape.pooled:
            return True
        committed = sum(slot.reserved for slot in self.slots if slot.busy) + self._reservation(request)
        if committed > shape.pool:
            return False
        idle = sorted((s for s in free if s.cached), key=lambda s: common_prefix(s.cached, request.prompt))
        held = sum(len(slot.cached) for slot in idle)
        while committed + held > shape.pool:
            victim = idle.pop(0)
            held -= len(victim.cached)
            llama_cpp.llama_memory_seq_rm(self.model.memory, victim.seq_id, -1, -1)
            victim.cached = []
        return True

    def _seat(self, request: GenerationRequest, free: list[Slot]) -> None:
        prompt = request.prompt
        sampler = Sampler(request.sampling, prompt, self.model.n_vocab)
        # The lowest free slot, always: a batch attends over the whole range of KV streams its
        # sequences span, so streams 0,1,2,7 cost as much as 0..7 (measured 62 ms against 38 ms a
        # step for 4 sequences). A longer prefix held elsewhere is copied in instead.
        slot = min(free, key=lambda s: s.seq_id)
        self._place_prefix(slot, prompt)
        slot.request = request
        slot.reserved = self._reservation(request)
        slot.sampler = sampler
        slot.pending = prompt[len(slot.cached) :]
        slot.reused = len(slot.cached)
        slot.text = TextStream(request.stop)
        slot.generated = 0
        slot.started_at = time.monotonic()
        slot.first_token_at = 0.0

    def _place_prefix(self, slot: Slot, prompt: list[int]) -> None:
        """Keep (or copy in) the longest cached prefix of ``prompt``; drop the rest of the sequence."""
        mem = self.model.memory
        own = common_prefix(slot.cached, prompt)
        donor, shared = slot, own
        for other in self.slots:
            if other is not slot:
                n = common_prefix(other.cached, prompt)
                if n > shared:
                    donor, shared = other, n
        # At least one prompt token must be evaluated to get logits for the first sample.
        shared = min(shared, len(prompt) - 1)
        if donor is not slot and shared - own >= MIN_COPY_GAIN:
            # Across KV streams only whole sequences can be copied (the data moves at the next
            # decode); the copy's tail beyond the shared prefix is dropped at once.
            llama_cpp.llama_memory_seq_rm(mem, slot.seq_id, -1, -1)
            llama_cpp.llama_memory_seq_cp(mem, donor.seq_id, slot.seq_id, -1, -1)
            llama_cpp.llama_memory_seq_rm(mem, slot.seq_id, shared, -1)
            slot.cached = prompt[:shared]
            return
        shared = min(own, len(prompt) - 1)
        if shared < len(slot.cached):
            if not llama_cpp.llama_memory_seq_rm(mem, slot.seq_id, shared, -1):
                # Some caches cannot drop a partial sequence; start this one from scratch.
                llama_cpp.llama_memory_seq_rm(mem, slot.seq_id, -1, -1)
                shared = 0
            slot.cached = slot.cached[:shared]

    def _step(self) -> None:
        """One engine step: retire what ended, fill one batch, decode it, sample what it produced."""
        self._retire()
        filled = self._fill_batch()
        if filled is None:
            return
        rc = llama_cpp.llama_decode(self.model.ctx, self._batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        self._sample(*filled)

    def _retire(self) -> None:
        """Free the slots whose client left and end the ones past their deadline."""
        now = time.monotonic()
        for slot in self.slots:
            request = slot.request
            if request is None:
                continue
            if request.cancelled:
                self._release(slot)
            elif now >= request.deadline:
                self._finish(slot, "length", note="deadline")

    def _fill_batch(self) -> tuple[list[Slot], list[tuple[Slot, int]]] | None:
        """Put each generating slot's last token in the batch, then prompt chunks, oldest request first.

        Returns the generating slots and the (slot, tokens taken) prompt chunks, or None when idle.
        """
        generating = [s for s in self.slots if s.busy and not s.pending]
        prefilling = sorted((s for s in self.slots if s.busy and s.pending), key=lambda s: s.started_at)
        if not generating and not prefilling:
            return None
        batch = self._batch
        capacity = self.model.shape.batch
        n = 0

        def add(token: int, pos: int, seq: int, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq
            batch.logits[n] = logits
            n += 1

        for slot in generating:
            slot.batch_index = n
            add(slot.last_token, len(slot.cached), slot.seq_id, True)
        chunks: list[tuple[Slot, int]] = []
        for slot in prefilling:
            room = capacity - n
            if room <= 0:
                break
            take = min(room, len(slot.pending))
            base = len(slot.cached)
            for i in range(take):
                add(slot.pending[i], base + i, slot.seq_id, False)
            done = take == len(slot.pending)
            if done:
                batch.logits[n - 1] = True
            slot.batch_index = n - 1 if done else -1
            chunks.append((slot, take))
        batch.n_tokens = n
        return generating, chunks

    def _sample(self, generating: list[Slot], chunks: list[tuple[Slot, int]]) -> None:
        """Record what the decode stored, then sample each slot that got logits."""
        for slot in generating:
            slot.cached.append(slot.last_token)
        for slot, take in chunks:
            slot.cached.extend(slot.pending[:take])
            slot.pending = slot.pending[take:]
        sampled = generating + [s for s, _ in chunks if not s.pending]
        for slot in sampled:
            assert slot.sampler is not None
            token = slot.sampler.sample(self.model.ctx, slot.batch_index)
            self._on_token(slot, token)

    def _on_token(self, slot: Slot, token: int) -> None:
        request = slot.request
        assert request is not None and slot.text is not None
        if not slot.first_token_at:
            slot.first_token_at = time.monotonic()
        if token in self.end_tokens or self.model.is_eog(token):
            self._finish(slot, "stop")
            return
        slot.generated += 1
        slot.last_token = token
        text = slot.text.feed(self.model.piece(token))
        if text:
            request.emit(TextDelta(text))
        if slot.text.stopped:
            self._finish(slot, "stop")
        elif slot.generated >= request.max_tokens or len(slot.cached) + 1 >= self.model.shape.per_slot:
            self._finish(slot, "length")

    def _finish(self, slot: Slot, reason: FinishReason, note: str | None = None) -> None:
        request = slot.request
        assert request is not None and slot.text is not None
        tail = slot.text.flush()
        if tail:
            request.emit(TextDelta(tail))
        end = time.monotonic()
        first = slot.first_token_at or end
        request.emit(
            Finished(
                finish_reason=reason,
                prompt_tokens=len(request.prompt),
                completion_tokens=slot.generated,
                cached_tokens=slot.reused,
                queued_ms=(slot.started_at - request.enqueued_at) * 1000,
                prompt_ms=(first - slot.started_at) * 1000,
                predicted_ms=(end - first) * 1000,
                note=note,
            )
        )
        self._avg_request_s = 0.8 * self._avg_request_s + 0.2 * (end - slot.started_at)
        self._release(slot)

    def _fail(self, slot: Slot, error: Exception) -> None:
        if slot.request is not None:
            slot.request.emit(Failed(error if isinstance(error, APIError) else InternalError(str(error))))
        self._release(slot)

    def _release(self, slot: Slot) -> None:
        if slot.sampler is not None:
            slot.sampler.close()
        slot.sampler = None
        slot.request = None
        slot.text = None
        slot.pending = []
        slot.batch_index = -1
        slot.reserved = 0
