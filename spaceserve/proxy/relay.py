"""Forwarding: walk the chain an alias maps to, try each upstream, relay the first good answer.

Fallback policy, in one place (the table in docs/proxy.md says the same):

- connection error, timeout before the first byte (first SSE event when streaming), 408, 429,
  5xx, a malformed answer, or a stream whose first event is an error: try the next upstream; the
  failure counts towards the upstream's cooldown;
- the request is too long for this upstream's context (:func:`is_context_overflow`): try the next
  upstream, which may have a larger one; no cooldown (the upstream is fine);
- 401, 402, 403, or "no such model" (404, or a 400 saying so: :func:`is_unknown_model`) for a
  model the proxy chose (a wrong key, no credit, a wrong model or base_url: the operator's mistake,
  not the client's): try the next upstream and cool this one down at once;
- "no such model" for the client's own model name (the upstream has no ``model`` set): try the
  next upstream, no cooldown;
- any other 4xx (400, 413, 422, ...): the client's problem; return it unchanged in OpenAI shape
  and try nothing else;
- a stream that fails after its first event was relayed cannot be retried invisibly: it ends with
  an error event and ``[DONE]``.

When every upstream tried answered with a client error that moved on (too long, an unknown model
of the client's) and none was skipped, the client gets the last of those answers as it was;
otherwise 502 (all tried ones failed) or 503 (none could be tried).

Upstream keys go out only in the ``Authorization`` header; text that comes back is scrubbed of
them before it can reach a client or a log line.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import httpx

from ..base.errors import APIError, ServiceUnavailable
from ..base.requestlog import RequestRecord
from ..base.schemas import Endpoint
from ..base.sse import DONE, sse
from . import hf
from .config import UpstreamConfig
from .state import CooldownEffect, UpstreamPool, UpstreamState

log = logging.getLogger("spaceserve.proxy")
T = TypeVar("T")
_PATHS: dict[Endpoint, str] = {"chat": "/chat/completions", "text": "/completions"}
_ERROR_TYPES = {401: "authentication_error", 403: "permission_error"}


class UpstreamFailure(Exception):
    """This upstream could not serve the request; the next one may.

    ``cooldown`` is what the failure does to the upstream's circuit; ``answer`` is the upstream's
    own error, kept for the client in case no other upstream does better."""

    def __init__(
        self,
        reason: str,
        code: str,
        retry_after: float | None = None,
        *,
        cooldown: CooldownEffect = "count",
        answer: RelayedError | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.retry_after = retry_after
        self.cooldown = cooldown
        self.answer = answer


class RelayedError(APIError):
    """A client error from an upstream, passed on with its status and message; no fallback."""

    def __init__(self, status: int, error: dict[str, Any], upstream: str) -> None:
        super().__init__(str(error.get("message")), code=error.get("code"), headers={"X-Upstream": upstream})
        self.status_code = status
        self.error_type = str(error.get("type") or "invalid_request_error")
        self._error = error

    def body(self) -> dict[str, Any]:
        return {"error": self._error}


class AllUpstreamsFailed(APIError):
    status_code = 502
    error_type = "upstream_error"
    default_code = "all_upstreams_failed"


class NoUpstreamAvailable(ServiceUnavailable):
    default_code = "no_upstream_available"


@asynccontextmanager
async def upstream_io(
    deadline: float, late: UpstreamFailure, *, during: str, connect_timeout: float = 0.0
) -> AsyncIterator[None]:
    """The one mapping of upstream I/O failures: past ``deadline`` raises ``late``; connect errors and
    timeouts, and any other transport error (``connection dropped <during>``), become UpstreamFailure
    with the reason label the metrics and cooldown use."""
    try:
        async with asyncio.timeout_at(deadline):
            yield
    except TimeoutError:
        raise late from None
    except httpx.ConnectTimeout:
        raise UpstreamFailure(
            f"no connection within {connect_timeout:g}s (connect_timeout)", "connect_timeout"
        ) from None
    except httpx.ConnectError as exc:
        raise UpstreamFailure(f"connection failed ({_describe(exc)})", "connect_error") from None
    except httpx.TransportError as exc:
        raise UpstreamFailure(f"connection dropped {during} ({_describe(exc)})", "dropped") from None


def _unfinished(config: UpstreamConfig) -> UpstreamFailure:
    return UpstreamFailure(f"did not finish within {config.total_timeout:g}s (total_timeout)", "total_timeout")


class UpstreamStreamBroken(APIError):
    status_code = 502
    error_type = "upstream_error"
    default_code = "upstream_stream_broken"


# -- server-sent events ---------------------------------------------------------------------


@dataclass(frozen=True)
class SSEEvent:
    raw: bytes  # as received, including the blank line that ends it
    data: str | None  # the joined data lines; None for comments and keep-alives

    @classmethod
    def parse(cls, raw: bytes) -> SSEEvent:
        lines = raw.decode("utf-8", "replace").split("\n")
        data = [line[5:].removeprefix(" ") for line in lines if line.startswith("data:")]
        return cls(raw, "\n".join(data) if data else None)

    @property
    def is_done(self) -> bool:
        return self.data is not None and self.data.strip() == "[DONE]"

    def json(self) -> Any:
        if self.data is None or not self.data.lstrip().startswith("{"):
            return None
        try:
            return json.loads(self.data)
        except ValueError:
            return None

    def error(self) -> Any:
        payload = self.json() if self.data and '"error"' in self.data else None
        return payload.get("error") if isinstance(payload, dict) and "choices" not in payload else None


class EventReader:
    """Splits a byte stream into SSE events as soon as each one is complete; no other buffering."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    async def next(self) -> SSEEvent | None:
        while True:
            end = self._buffer.find(b"\n\n")
            if end >= 0:
                raw, self._buffer = self._buffer[: end + 2], self._buffer[end + 2 :]
                if raw.strip():
                    return SSEEvent.parse(raw)
                continue
            chunk = await anext(self._chunks, None)
            if chunk is None:
                return None  # a partial event at the end is dropped, never relayed half-written
            self._buffer = (self._buffer + chunk).replace(b"\r\n", b"\n")


class UpstreamStream:
    """An upstream stream whose first event has arrived: what the relay reads from.

    It holds the upstream's in-flight slot until :meth:`aclose`, which is safe to call twice.
    """

    def __init__(
        self,
        state: UpstreamState,
        first: SSEEvent,
        *,
        reader: EventReader | None = None,
        response: httpx.Response | None = None,
        deadline: float = math.inf,
        pending: list[SSEEvent] | None = None,
    ) -> None:
        self.state = state
        self.first = first
        self._reader = reader
        self._response = response
        self._deadline = deadline
        self._pending = deque(pending or [])
        self._closed = False

    async def next(self) -> SSEEvent | None:
        if self._pending:
            return self._pending.popleft()
        if self._reader is None:
            return None
        async with upstream_io(self._deadline, _unfinished(self.state.config), during="mid-stream"):
            return await self._reader.next()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._response is not None:
                # Closing mid-body drops the connection: that is how the upstream learns to stop.
                with anyio.CancelScope(shield=True):
                    await self._response.aclose()
        finally:
            self.state.release()


@dataclass(frozen=True)
class Served:
    upstream: str
    body: dict[str, Any]


# -- the service ----------------------------------------------------------------------------


class ProxyService:
    def __init__(self, pool: UpstreamPool, client: httpx.AsyncClient) -> None:
        self.pool = pool
        self.client = client

    async def complete(self, endpoint: Endpoint, body: dict[str, Any], record: RequestRecord) -> Served:
        """A non-streamed answer from the first upstream in the chain that gives one."""

        async def attempt(state: UpstreamState) -> Served:
            return Served(state.name, await self._fetch_json(state, endpoint, body))

        served = await self._walk(str(body["model"]), record, attempt, hold=False)
        usage = served.body.get("usage")
        if isinstance(usage, dict):
            record.prompt_tokens = _int_or_none(usage.get("prompt_tokens"))
            record.completion_tokens = _int_or_none(usage.get("completion_tokens"))
        choices = served.body.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            record.finish_reason = choices[0].get("finish_reason")
        return served

    async def open_stream(self, endpoint: Endpoint, body: dict[str, Any], record: RequestRecord) -> UpstreamStream:
        """A stream from the first upstream in the chain that sends a first event; the caller closes it."""

        async def attempt(state: UpstreamState) -> UpstreamStream:
            return await self._open_stream(state, endpoint, body)

        return await self._walk(str(body["model"]), record, attempt, hold=True)

    async def relay(self, stream: UpstreamStream, record: RequestRecord) -> AsyncIterator[bytes]:
        """The upstream's events as they arrive; an error event and ``[DONE]`` if it breaks."""
        record.first_token()
        try:
            yield stream.first.raw
            while True:
                try:
                    event = await stream.next()
                except UpstreamFailure as failure:
                    yield self._broken(stream.state, failure, record)
                    return
                if event is None:
                    ended = UpstreamFailure("the upstream ended the stream without [DONE]", "incomplete")
                    yield self._broken(stream.state, ended, record)
                    return
                if b'"usage":{' in event.raw:
                    _read_usage(event, record)
                yield event.raw
                if event.is_done:
                    return
        finally:
            await stream.aclose()

    # -- walking the chain ------------------------------------------------------------------

    async def _walk(
        self, model: str, record: RequestRecord, attempt: Callable[[UpstreamState], Awaitable[T]], *, hold: bool
    ) -> T:
        """Try the chain's upstreams in order until one serves; ``hold`` keeps its slot for a stream."""
        chain = self.pool.chain(model)
        problems: list[str] = []
        failed: list[str] = []
        tried: set[str] = set()
        skipped = False
        answers: list[RelayedError | None] = []  # per failed attempt: the client's error, if it was one
        last_failed: UpstreamState | None = None
        for tier in chain:
            while (state := self.pool.pick(tier, tried)) is not None:
                tried.add(state.name)
                if last_failed is not None:
                    last_failed.record_fallback(state.name)
                state.acquire()
                try:
                    result = await attempt(state)
                except UpstreamFailure as failure:
                    state.record_failure(
                        failure.reason, failure.retry_after, code=failure.code, cooldown=failure.cooldown
                    )
                    state.release()
                    last_failed = state
                    problems.append(f"{state.name}: {failure.reason}")
                    failed.append(f"{state.name}:{failure.code}")
                    answers.append(failure.answer)
                    _log_failure(state, failure)
                    continue
                except RelayedError as relayed:
                    state.record_success(client_error=True)
                    state.release()
                    self._note(record, state.name, tried, failed)
                    record.failed(relayed)
                    raise
                except BaseException:  # cancelled: the client went away
                    state.release()
                    raise
                state.record_success()
                if not hold:
                    state.release()
                self._note(record, state.name, tried, failed)
                return result
            for member in tier.members:
                if member.name in tried:
                    continue
                other = self.pool.states[member.name]
                reason = other.unavailable_reason()
                if reason != "disabled":
                    other.record_skip()
                    skipped = True
                    problems.append(f"{member.name}: {reason or 'not tried'}")
        self._note(record, None, tried, failed)
        # When every upstream that could be asked said the request itself does not suit it (too
        # long, a model it does not have), the last one's own answer tells the client more than a 502.
        told = answers[-1] if answers and not skipped and all(answers) else None
        error: APIError = told or self._exhausted(model, problems, attempted=bool(tried))
        record.failed(error)
        raise error

    def _exhausted(self, model: str, problems: list[str], *, attempted: bool) -> APIError:
        listing = "; ".join(problems) or "no upstream is enabled"
        if attempted:
            return AllUpstreamsFailed(f"every upstream failed for model '{model}': {listing}")
        waits = [wait for state in self.pool.states.values() if (wait := state.available_in()) is not None]
        headers = {"Retry-After": str(max(1, math.ceil(min(waits))))} if waits else {}
        return NoUpstreamAvailable(f"no upstream is available for model '{model}': {listing}", headers=headers)

    @staticmethod
    def _note(record: RequestRecord, upstream: str | None, tried: set[str], failed: list[str]) -> None:
        if upstream is not None:
            record.extra["upstream"] = upstream
        record.extra["upstream_attempts"] = len(tried)
        if failed:
            record.extra["upstream_failures"] = ",".join(failed)

    def _broken(self, state: UpstreamState, failure: UpstreamFailure, record: RequestRecord) -> bytes:
        reason = failure.reason
        state.record_failure(reason, code=failure.code)
        log.warning("upstream %s broke off a stream: %s", state.name, reason)
        error = UpstreamStreamBroken(f"the upstream '{state.name}' failed after the stream had started: {reason}")
        record.failed(error)
        return sse(error.body()) + DONE

    # -- one upstream -----------------------------------------------------------------------

    def _target(self, state: UpstreamState, endpoint: Endpoint, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        config = state.config
        if config.kind == "hf-text-generation":
            try:
                return config.base_url, hf.to_payload(endpoint, body)
            except hf.Unmappable as exc:
                raise UpstreamFailure(f"cannot express the request for it: {exc}", "unmappable") from None
        payload = {**body, "model": config.model} if config.model else body
        return config.base_url + _PATHS[endpoint], payload

    async def _fetch_json(self, state: UpstreamState, endpoint: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
        config = state.config
        deadline = _now() + config.total_timeout
        url, payload = self._target(state, endpoint, body)
        payload = {key: value for key, value in payload.items() if key not in ("stream", "stream_options")}
        response = await self._send(state, url, payload, stream=False, deadline=deadline)
        try:
            async with upstream_io(deadline, _unfinished(config), during="while reading the answer"):
                raw = await response.aread()
        finally:
            await response.aclose()
        try:
            answer = json.loads(raw)
        except ValueError:
            raise UpstreamFailure("the answer is not JSON", "bad_response") from None
        if config.kind == "hf-text-generation":
            try:
                text = hf.generated_text(answer)
            except ValueError as exc:
                raise UpstreamFailure(f"unexpected answer: {exc}", "bad_response") from None
            return hf.to_openai(endpoint, text, config.model or str(body["model"]))
        if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
            raise UpstreamFailure("the answer is not a completion (it has no choices)", "bad_response")
        return answer

    async def _open_stream(self, state: UpstreamState, endpoint: Endpoint, body: dict[str, Any]) -> UpstreamStream:
        config = state.config
        if config.kind == "hf-text-generation":
            # Such endpoints cannot stream; the whole answer goes out as one chunk.
            answer = await self._fetch_json(state, endpoint, body)
            choice = answer["choices"][0]
            text = choice["message"]["content"] if endpoint == "chat" else choice["text"]
            events = [SSEEvent.parse(raw) for raw in hf.to_sse_events(endpoint, text, str(answer["model"]))]
            return UpstreamStream(state, events[0], pending=[*events[1:], SSEEvent.parse(DONE)])
        deadline = _now() + config.total_timeout
        first_by = min(_now() + config.first_byte_timeout, deadline)
        url, payload = self._target(state, endpoint, body)
        response = await self._send(state, url, payload, stream=True, deadline=deadline)
        try:
            if "text/event-stream" not in response.headers.get("content-type", ""):
                raise UpstreamFailure("answered a stream request without an event stream", "bad_response")
            reader = EventReader(response.aiter_bytes())
            late = UpstreamFailure(
                f"no first event within {config.first_byte_timeout:g}s (first_byte_timeout)", "first_byte_timeout"
            )
            async with upstream_io(first_by, late, during="before the first event"):
                event = await reader.next()
                # Comments and keep-alives before the first data are not relayed: sending
                # anything would commit the response to this upstream.
                while event is not None and event.data is None:
                    event = await reader.next()
            if event is None or event.is_done:
                raise UpstreamFailure("the stream ended before its first event", "dropped")
            problem = event.error()
            if problem is not None:
                error = _openai_error(400, state.scrub(json.dumps({"error": problem})))
                if is_context_overflow(error):
                    raise _too_long(state, 400, error)
                raise UpstreamFailure(f"the stream began with an error: {str(error['message'])[:200]}", "stream_error")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await response.aclose()
            raise
        return UpstreamStream(state, event, reader=reader, response=response, deadline=deadline)

    async def _send(
        self, state: UpstreamState, url: str, payload: dict[str, Any], *, stream: bool, deadline: float
    ) -> httpx.Response:
        """Send and wait for the status line within first_byte_timeout; 2xx comes back open, the rest raises."""
        config = state.config
        headers = {
            "Accept": "text/event-stream" if stream else "application/json",
            "Accept-Encoding": "identity",  # compression would hold chunks back
            **state.auth_headers(),
        }
        timeout = httpx.Timeout(
            connect=config.connect_timeout, read=config.total_timeout, write=config.first_byte_timeout,
            pool=config.connect_timeout,
        )  # fmt: skip
        request = self.client.build_request("POST", url, json=payload, headers=headers, timeout=timeout)
        first_by = min(_now() + config.first_byte_timeout, deadline)
        late = UpstreamFailure(
            f"no response within {config.first_byte_timeout:g}s (first_byte_timeout)", "first_byte_timeout"
        )
        async with upstream_io(first_by, late, during="before an answer", connect_timeout=config.connect_timeout):
            response = await self.client.send(request, stream=True)
        if response.status_code < 300:
            return response
        try:
            async with asyncio.timeout_at(first_by + 5):
                raw = await response.aread()
        except (TimeoutError, httpx.TransportError):
            raw = b""
        finally:
            await response.aclose()
        raise self._classify(state, response, raw)

    @staticmethod
    def _classify(state: UpstreamState, response: httpx.Response, raw: bytes) -> Exception:
        status = response.status_code
        text = state.scrub(raw.decode("utf-8", "replace"))
        error = _openai_error(status, text)
        if status in (408, 429) or status >= 500:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            detail = f"HTTP {status}"
            if retry_after:
                detail += f" (Retry-After {retry_after:g}s)"
            if error["message"]:
                detail += f": {str(error['message'])[:160]}"
            return UpstreamFailure(detail, f"http_{status}", retry_after)
        if status < 400:
            return UpstreamFailure(f"unexpected HTTP {status} (redirects are not followed)", "redirect")
        if status in _OVERFLOW_STATUSES and is_context_overflow(error):
            return _too_long(state, status, error)
        # The upstream's messages are left out below: a refused key is often echoed back in part.
        code = error.get("code")
        said = f" ({code})" if isinstance(code, str) and _LABEL.fullmatch(code) else ""
        if status in _OPERATOR_FAULTS:
            label, hint = _OPERATOR_FAULTS[status]
            return UpstreamFailure(f"HTTP {status}{said}: {hint}", label, cooldown="now")
        if status == 404 or (status == 400 and is_unknown_model(error)):
            status_said = f"HTTP {status}{said}"
            if state.config.model:
                hint = f"no such model '{state.config.model}' or route; check its model and base_url"
                return UpstreamFailure(f"{status_said}: {hint}", "not_found", cooldown="now")
            # The client's own model name went through: this upstream lacks it, another may not.
            answer = RelayedError(status, error, state.name)
            return UpstreamFailure(
                f"{status_said}: it does not serve that model", "not_found", cooldown="none", answer=answer
            )
        return RelayedError(status, error, state.name)


# -- which client errors move on ----------------------------------------------------------

# 4xx answers that say this upstream is set up wrong, whatever the request: label and hint.
_OPERATOR_FAULTS = {
    401: ("auth", "the upstream refused the proxy's key; check its api_key_env"),
    402: ("payment", "the upstream wants payment (credits used up?)"),
    403: ("auth", "the upstream's key may not do this; check its api_key_env and the key's permissions"),
}
_LABEL = re.compile(r"[A-Za-z0-9_.-]{1,40}")
# Statuses a too-long request comes back with: 400 (OpenAI, llama-server, vLLM), 413, 422 (TGI).
_OVERFLOW_STATUSES = (400, 413, 422)
# Wording of the too-long answers, lower case: OpenAI and vLLM ("maximum context length is N
# tokens"), SGLang and Together ("the model's context length"), llama-server ("exceeds the
# available context size"), others' "context window", TGI and the HF router's hf-inference
# provider ("`inputs` tokens + `max_new_tokens` must be <= N", "`inputs` must have less than N tokens").
_OVERFLOW_PHRASES = (
    "context length",
    "maximum context",
    "context size",
    "context window",
    "`inputs` tokens + `max_new_tokens` must be",
    "`inputs` must have less than",
)


def is_context_overflow(error: dict[str, Any]) -> bool:
    """Whether an upstream's error (OpenAI shape, from :func:`_openai_error`) says the request is too
    long for its context: code ``context_length_exceeded`` (OpenAI, this project's model server),
    type ``exceed_context_size_error`` (llama-server), or a message with one of ``_OVERFLOW_PHRASES``."""
    if error.get("code") == "context_length_exceeded" or error.get("type") == "exceed_context_size_error":
        return True
    message = str(error.get("message") or "").lower()
    return any(phrase in message for phrase in _OVERFLOW_PHRASES)


def is_unknown_model(error: dict[str, Any]) -> bool:
    """Whether a 400 says the upstream has no such model: code ``model_not_found`` or
    ``model_not_supported``, or the HF router's "is not supported by any provider you have enabled"."""
    if error.get("code") in ("model_not_found", "model_not_supported"):
        return True
    return "not supported by any provider" in str(error.get("message") or "").lower()


def _too_long(state: UpstreamState, status: int, error: dict[str, Any]) -> UpstreamFailure:
    # The message is the upstream's, with token counts in it; no prompt text comes back in these.
    message = str(error["message"])[:160]
    return UpstreamFailure(
        f"too long for its context (HTTP {status}: {message})",
        "context_length",
        cooldown="none",
        answer=RelayedError(status, error, state.name),
    )


def _log_failure(state: UpstreamState, failure: UpstreamFailure) -> None:
    if failure.cooldown == "now":
        log.error(
            "upstream %s is misconfigured (%s): cooling it down for %gs, trying the next one",
            state.name, failure.reason, state.policy.period,
        )  # fmt: skip
    elif failure.cooldown == "none":
        log.info("upstream %s cannot take this request, trying the next one: %s", state.name, failure.reason)
    else:
        log.warning("upstream %s failed, trying the next one: %s", state.name, failure.reason)


# -- health probes --------------------------------------------------------------------------


class HealthProber:
    """Background GETs of each upstream's /health, fed into the same state as real requests."""

    def __init__(self, pool: UpstreamPool, client: httpx.AsyncClient, interval: float, timeout: float) -> None:
        self.pool = pool
        self.client = client
        self.interval = interval
        self.timeout = timeout

    async def run(self) -> None:
        while True:
            try:
                await self.probe_all()
            except Exception:  # a bug here must not end the probing for good
                log.exception("health probes failed")
            await asyncio.sleep(self.interval)

    async def probe_all(self) -> None:
        probes = []
        for state in self.pool.states.values():
            url = state.config.probe_url()
            if url and state.status() not in ("disabled", "retry-after"):
                probes.append(self.probe(state, url))
        await asyncio.gather(*probes)

    async def probe(self, state: UpstreamState, url: str) -> None:
        # No key goes with a probe: health_url may point at a host other than base_url.
        try:
            response = await self.client.get(url, timeout=self.timeout)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            state.record_probe(False, f"health probe failed ({_describe(exc)})")
            return
        status = response.status_code
        if status < 300:
            state.record_probe(True)
        elif status in (408, 429) or status >= 500:
            state.record_probe(False, f"health probe: HTTP {status}")
        # Other answers (404: no /health route) say nothing about the upstream's health.


# -- helpers --------------------------------------------------------------------------------


def _now() -> float:
    return asyncio.get_running_loop().time()


def _describe(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def _read_usage(event: SSEEvent, record: RequestRecord) -> None:
    payload = event.json()
    usage = payload.get("usage") if isinstance(payload, dict) else None
    if isinstance(usage, dict):
        record.prompt_tokens = _int_or_none(usage.get("prompt_tokens"))
        record.completion_tokens = _int_or_none(usage.get("completion_tokens"))


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _openai_error(status: int, text: str) -> dict[str, Any]:
    """An upstream's error body in OpenAI shape, keeping its message and fields where it has them."""
    default = {"message": "", "type": _ERROR_TYPES.get(status, "invalid_request_error"), "param": None, "code": None}
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return {**default, **error}
        if isinstance(error, str):  # text-generation servers: {"error": "...", "error_type": "..."}
            return {**default, "message": error}
        if isinstance(parsed.get("detail"), str):
            return {**default, "message": parsed["detail"]}
    message = text.strip()[:500] or f"the upstream answered HTTP {status}"
    return {**default, "message": message}
