"""The model's life in the server: loading in the background, ready, or failed with a reason."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..base.errors import Misconfigured, ServiceUnavailable
from ..engine.source import ModelSourceError
from ..engine.types import Engine, ModelLoadError
from ..settings import SettingsError

log = logging.getLogger("spaceserve.model.runtime")

Status = Literal["loading", "ok", "error"]


class ModelRuntime:
    def __init__(self, loader: Callable[[], Engine], *, warmup: bool) -> None:
        self._loader = loader
        self._warmup = warmup
        self.status: Status = "loading"
        self.reason: str | None = None
        self.engine: Engine | None = None
        self.load_seconds: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        started = time.monotonic()
        try:
            engine = await asyncio.to_thread(self._loader)
            if self._warmup:
                await asyncio.to_thread(engine.warm_up)
        except (ModelSourceError, ModelLoadError, SettingsError) as exc:
            self._failed(str(exc))
            return
        except Exception as exc:
            log.exception("model load failed")
            self._failed(f"unexpected error while loading the model: {exc.__class__.__name__}: {exc}")
            return
        self.engine = engine
        self.load_seconds = time.monotonic() - started
        self.status = "ok"
        log.info("model ready in %.1fs", self.load_seconds)

    def _failed(self, reason: str) -> None:
        self.status = "error"
        self.reason = reason
        log.error("model failed to load: %s", reason)

    def require(self) -> Engine:
        if self.engine is not None:
            return self.engine
        if self.status == "error":
            raise Misconfigured(f"the model failed to load: {self.reason}", code="model_load_failed")
        raise ServiceUnavailable(
            "the model is still loading; retry shortly", code="model_loading", headers={"Retry-After": "5"}
        )

    def health(self) -> dict[str, Any]:
        if self.engine is None:
            body: dict[str, Any] = {"status": self.status}
            if self.reason:
                body["reason"] = self.reason
            return body
        info = self.engine.info
        return {
            "status": "ok",
            "model": info.model_id,
            "context_size": info.context_size,
            "threads": info.threads,
            "slots": info.slots,
            "active": self.engine.active,
            "queued": self.engine.queued,
            "chat_template": info.chat_template,
            "kv_cache": info.kv_cache,
            "load_seconds": round(self.load_seconds or 0.0, 2),
        }

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            # A load in a worker thread cannot be interrupted; wait for it so the engine is freed.
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=60)
            except TimeoutError:
                log.warning("model still loading at shutdown")
        if self.engine is not None:
            await asyncio.to_thread(self.engine.close)
            self.engine = None


class RuntimeCollector:
    """Model state, load time, slots, active sequences and queue depth, read at scrape time."""

    def __init__(self, runtime: Callable[[], ModelRuntime | None]) -> None:
        self.runtime = runtime

    def collect(self) -> Iterable[Metric]:
        runtime = self.runtime()
        if runtime is None:
            return
        state = GaugeMetricFamily(
            "spaceserve_model_state", "1 for the model's current state (loading, ok, error)", labels=["state"]
        )
        for name in ("loading", "ok", "error"):
            state.add_metric([name], 1.0 if runtime.status == name else 0.0)
        yield state
        if runtime.load_seconds is not None:
            yield GaugeMetricFamily(
                "spaceserve_model_load_seconds", "seconds the model took to load (and warm up)", runtime.load_seconds
            )
        engine = runtime.engine
        if engine is not None:
            yield GaugeMetricFamily("spaceserve_slots", "sequences the engine can run at once", engine.info.slots)
            yield GaugeMetricFamily("spaceserve_active_sequences", "sequences being generated now", engine.active)
            yield GaugeMetricFamily("spaceserve_queue_depth", "requests waiting for a free slot", engine.queued)
            threads = engine.thread_use()
            yield GaugeMetricFamily("spaceserve_decode_threads", "threads the last engine step ran with", threads.now)
            yield CounterMetricFamily(
                "spaceserve_thread_probes",
                "times the engine measured a neighbouring thread count (ADAPTIVE_THREADS)",
                threads.probes,
            )
            yield CounterMetricFamily(
                "spaceserve_thread_switches",
                "times a neighbouring thread count was faster and became the current one",
                threads.switches,
            )
