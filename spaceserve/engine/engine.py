"""The engine the server talks to: prompts in, an async stream of text deltas and a finish out."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import AsyncGenerator

from ..settings import ModelSettings
from .chat_format import ChatFormat, resolve_chat_format
from .model import ContextShape, LoadedModel
from .scheduler import Scheduler
from .source import resolve_model_path
from .types import EngineInfo, Event, Failed, Finished, GenerationRequest, ThreadUse

log = logging.getLogger("spaceserve.engine")


class Mailbox:
    """Carries events from the scheduler thread into the event loop, one wake-up per batch.

    Every token of every stream would otherwise wake the loop on its own; on 2 vCPU each wake-up
    takes CPU from llama.cpp's threads in the middle of a decode.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._items: list[tuple[asyncio.Queue[Event], Event]] = []

    def post(self, queue: asyncio.Queue[Event], event: Event) -> None:
        with self._lock:
            self._items.append((queue, event))
            if len(self._items) > 1:
                return  # a drain is already on its way
        self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        for queue, event in items:
            queue.put_nowait(event)


def end_tokens(model: LoadedModel, chat_format: ChatFormat) -> set[int]:
    """Tokens that end a reply besides the vocabulary's end-of-generation ones: the template's
    turn-end markers (when each is one token) and the vocabulary's end-of-turn token."""
    tokens = {t for t in (model.single_token(m) for m in chat_format.end_markers) if t is not None}
    if model.eot >= 0:
        tokens.add(model.eot)
    log.info(
        "generation ends on %s (template %s) and the vocabulary's end-of-generation tokens",
        ", ".join(sorted(model.token_text(t) for t in tokens)) or "no extra token",
        chat_format.name,
    )
    return tokens


class LlamaEngine:
    def __init__(
        self,
        model: LoadedModel,
        chat_format: ChatFormat,
        model_id: str,
        max_queue: int,
        *,
        parse_special_in_prompt: bool = False,
        draft_max: int = 0,
        adaptive_threads: bool = False,
    ) -> None:
        self.model = model
        self.chat_format = chat_format
        self.parse_special_in_prompt = parse_special_in_prompt
        self.scheduler = Scheduler(
            model,
            max_queue=max_queue,
            end_tokens=end_tokens(model, chat_format),
            draft_max=draft_max,
            adaptive_threads=adaptive_threads,
        )
        self.info = EngineInfo(
            model_id=model_id,
            context_size=model.shape.per_slot,
            threads=model.shape.threads,
            slots=model.shape.slots,
            chat_template=chat_format.name,
            n_vocab=model.n_vocab,
            kv_cache=model.describe_kv(),
        )
        self._mailbox: Mailbox | None = None
        self.scheduler.start()

    @classmethod
    def load(cls, settings: ModelSettings, model_id: str) -> LlamaEngine:
        """Resolve, load and wrap the model; blocking, so run it off the event loop."""
        token = settings.hf_token.get_secret_value() if settings.hf_token else None
        path = resolve_model_path(settings.model_source, hf_token=token, cache_dir=settings.model_cache_dir)
        shape = ContextShape(
            per_slot=settings.context_size,
            slots=settings.parallel_slots,
            batch=settings.batch_size,
            threads=settings.threads(),
            pool=settings.kv_cache_tokens,
            kv_type=settings.kv_cache_type,
        )
        started = time.monotonic()
        model = LoadedModel(path, shape, verbose=settings.log_level == "debug")
        log.info(
            "loaded %s in %.1fs (%s, %d threads)",
            path.name,
            time.monotonic() - started,
            model.architecture,
            shape.threads,
        )
        try:
            chat_format = resolve_chat_format(
                settings.chat_template,
                settings.chat_template_file,
                model.meta("tokenizer.chat_template"),
                model.architecture,
                model.token_text(model.bos) if model.bos >= 0 else "",
                model.token_text(model.eos) if model.eos >= 0 else "",
            )
        except Exception:
            model.close()
            raise
        return cls(
            model,
            chat_format,
            model_id,
            settings.max_queue,
            parse_special_in_prompt=settings.parse_special_in_prompt,
            draft_max=settings.speculative_draft_max if settings.speculative else 0,
            adaptive_threads=settings.adaptive_threads,
        )

    @property
    def active(self) -> int:
        return self.scheduler.active

    @property
    def queued(self) -> int:
        return self.scheduler.queued

    def thread_use(self) -> ThreadUse:
        tuner = self.scheduler.tuner
        if tuner is None:
            return ThreadUse(self.scheduler.threads)
        return ThreadUse(self.scheduler.threads, tuner.probes, tuner.switches)

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Control tokens come from the template's markup only, never from what a message says."""
        return self.model.tokenize_segments(self.chat_format.render_segments(messages))

    def text_prompt(self, prompt: str) -> list[int]:
        return self.model.tokenize(prompt, parse_special=self.parse_special_in_prompt)

    def start(self, request: GenerationRequest) -> AsyncGenerator[Event, None]:
        """Queue ``request`` now (raising at once when the queue is full) and return its events.

        Closing the iterator early (the client went away) cancels the request.
        """
        loop = asyncio.get_running_loop()
        if self._mailbox is None or self._mailbox.loop is not loop:
            self._mailbox = Mailbox(loop)
        events: asyncio.Queue[Event] = asyncio.Queue()
        request.emit = functools.partial(self._mailbox.post, events)
        self.scheduler.submit(request)
        return self._events(request, events)

    async def _events(self, request: GenerationRequest, events: asyncio.Queue[Event]) -> AsyncGenerator[Event, None]:
        try:
            while True:
                event = await events.get()
                yield event
                if isinstance(event, (Finished, Failed)):
                    return
        finally:
            request.cancelled = True
            self.scheduler.wake()

    def warm_up(self) -> None:
        """One short generation so the first user does not pay for paging the weights in."""
        done = threading.Event()
        outcome: list[Event] = []

        def emit(event: Event) -> None:
            if isinstance(event, (Finished, Failed)):
                outcome.append(event)
                done.set()

        prompt = self.chat_prompt([{"role": "user", "content": "Hello"}])
        self.scheduler.submit(GenerationRequest(prompt=prompt, max_tokens=4, emit=emit))
        if not done.wait(timeout=600):
            raise RuntimeError("warm-up generation did not finish within 600 s")
        if isinstance(outcome[0], Failed):
            raise RuntimeError(f"warm-up generation failed: {outcome[0].error.message}")

    def close(self) -> None:
        self.scheduler.stop()
        self.model.close()
