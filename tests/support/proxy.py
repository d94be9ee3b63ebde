"""Helpers for the proxy tests: small misbehaving upstreams on loopback and a proxy starter.

:class:`FakeUpstream` is a real HTTP/1.1 server (asyncio, in a thread) that does on purpose what
real backends do by accident: refuse, hang before the first byte, answer 500, 429 with
Retry-After or 401, break a stream after its first chunk. It records what it received and
notices when the proxy drops the connection, which is how the tests see cancellation arrive.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import httpx

from spaceserve.deploy.process import free_port

from .servers import ServerProcess

# Short timeouts keep the failure tests quick; the proxy's defaults are for real Spaces.
FAST = {"connect_timeout": 1.0, "first_byte_timeout": 2.0, "total_timeout": 20.0}
# What every fake completion reports (non-streamed, or as the last chunk when include_usage is asked).
USAGE = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


# Genuinely bad requests: relayed to the client as they are, no fallback.
GENUINE_400 = "'temperature': 3.5 is greater than the maximum of 2"
GENUINE_422 = "Input validation error: `temperature` must be strictly positive"
# "Too long for my context", as real servers say it: (status, body).
TOO_LONG: dict[str, tuple[int, Any]] = {
    "context": (
        400,
        {
            "error": {
                "message": "This model's maximum context length is 4096 tokens. However, your messages resulted in "
                "9000 tokens. Please reduce the length of the messages.",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
        },
    ),
    "context-llama": (
        400,
        {
            "error": {
                "code": 400,
                "message": "request (9000 tokens) exceeds the available context size (2048 tokens), try increasing it",
                "type": "exceed_context_size_error",
                "n_prompt_tokens": 9000,
                "n_ctx": 2048,
            }
        },
    ),
    "context-tgi": (
        422,
        {
            "error": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. "
            "Given: 9000 `inputs` tokens and 512 `max_new_tokens`",
            "error_type": "validation",
        },
    ),
}


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class FakeUpstream:
    """Modes: ok, slow (ok after ``delay``), 500, 429, 401, 403, 404 and 400-model (no such model), 400 and 422
    (genuinely bad requests), hang, drop (stream breaks after its first chunk), hold (stream sends
    one chunk, then waits), hf (text-generation answers), and the too-long answers of real servers
    (see ``TOO_LONG``): context (OpenAI), context-llama (llama-server), context-tgi (TGI, 422),
    context-event (a stream whose first event is OpenAI's error)."""

    def __init__(self, mode: str = "ok", *, name: str = "fake", retry_after: str | None = None) -> None:
        self.mode = mode
        self.name = name
        self.retry_after = retry_after
        self.delay = 0.6
        self.health_status = 200
        self.text = f"ok from {name}"
        self.requests: list[Received] = []
        self.disconnected = threading.Event()
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("fake upstream did not start")

    # -- addresses --------------------------------------------------------------------------

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.root + "/v1"

    def completions(self) -> list[Received]:
        return [r for r in self.requests if r.method == "POST"]

    # -- server -----------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        def shutdown() -> None:
            self._server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.stop()

        self._loop.call_soon_threadsafe(shutdown)
        self._thread.join(5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        method, path, _ = head[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
        length = int(headers.get("content-length", "0"))
        raw = await reader.readexactly(length) if length else b""
        if path.endswith("/health"):
            writer.write(_response(self.health_status, {"status": "ok" if self.health_status == 200 else "down"}))
            await writer.drain()
            return
        body = json.loads(raw) if raw else None
        self.requests.append(Received(method, path, headers, body))
        stream = bool(body and body.get("stream"))
        mode = self.mode
        if mode in ("ok", "slow"):
            if mode == "slow":
                await asyncio.sleep(self.delay)
            if stream:
                events = [
                    self._chunk({"role": "assistant", "content": ""}),
                    self._chunk({"content": self.text}),
                    self._chunk({}, "stop"),
                ]
                if (body.get("stream_options") or {}).get("include_usage"):
                    events.append({**self._chunk({}), "choices": [], "usage": USAGE})
                await self._stream(writer, events, done=True)
            else:
                writer.write(_response(200, self._completion(path)))
        elif mode == "500":
            writer.write(_response(500, _error("the upstream fell over", "server_error")))
        elif mode == "429":
            extra = [f"Retry-After: {self.retry_after}"] if self.retry_after else []
            writer.write(_response(429, _error("slow down", "rate_limit_exceeded"), extra))
        elif mode == "401":
            # Some APIs echo the key they were given; the proxy must not pass it on.
            key = headers.get("authorization", "").removeprefix("Bearer ")
            writer.write(_response(401, _error(f"Incorrect API key provided: {key}", "authentication_error")))
        elif mode == "403":
            writer.write(_response(403, _error("This token may not call Inference Providers", "permission_error")))
        elif mode == "404":
            missing = _error("The model `gpt-nope` does not exist", "invalid_request_error")
            missing["error"]["code"] = "model_not_found"
            writer.write(_response(404, missing))
        elif mode == "400-model":  # the HF router's answer for a model no enabled provider serves
            message = "The requested model 'gpt-nope' is not supported by any provider you have enabled."
            writer.write(_response(400, _error(message, "invalid_request_error")))
        elif mode == "400":
            writer.write(_response(400, _error(GENUINE_400, "invalid_request_error")))
        elif mode == "422":
            writer.write(_response(422, {"error": GENUINE_422, "error_type": "validation"}))
        elif mode == "context-event":
            await self._stream(writer, [TOO_LONG["context"][1]], done=True)
        elif mode in TOO_LONG:
            writer.write(_response(*TOO_LONG[mode]))
        elif mode == "hf":
            writer.write(_response(200, [{"generated_text": self.text}]))
        elif mode == "hang":
            await self._wait_for_disconnect(reader)
            return
        elif mode == "drop":
            await self._stream(writer, [self._chunk({"role": "assistant", "content": "partial"})], done=False)
            writer.transport.abort()  # no final chunk, no [DONE]: the connection just dies
            return
        elif mode == "hold":
            await self._stream(writer, [self._chunk({"role": "assistant", "content": "first"})], done=False)
            await self._wait_for_disconnect(reader)
            return
        await writer.drain()

    async def _wait_for_disconnect(self, reader: asyncio.StreamReader) -> None:
        while await reader.read(1024):
            pass
        self.disconnected.set()

    async def _stream(self, writer: asyncio.StreamWriter, events: list[dict[str, Any]], *, done: bool) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n"
        )
        payloads = [b"data: " + json.dumps(event).encode() + b"\n\n" for event in events]
        if done:
            payloads.append(b"data: [DONE]\n\n")
        for payload in payloads:
            writer.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
            await writer.drain()
        if done:
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def _completion(self, path: str) -> dict[str, Any]:
        if path.endswith("/chat/completions"):
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": self.text}}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": self.text}
            obj = "text_completion"
        choice["finish_reason"] = "stop"
        return {"id": "fake-1", "object": obj, "created": int(time.time()), "model": self.name, "choices": [choice],
                "usage": USAGE}  # fmt: skip


@dataclass
class Rig:
    """A proxy process and the fake upstreams it forwards to, by name."""

    proxy: ServerProcess
    fakes: dict[str, FakeUpstream]


def _response(status: int, payload: Any, extra: list[str] | None = None) -> bytes:
    body = json.dumps(payload).encode()
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(extra or []),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _error(message: str, error_type: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": None, "code": None}}


def closed_port_url() -> str:
    """An address where nothing listens: connections are refused at once."""
    return f"http://127.0.0.1:{free_port()}/v1"


def upstream(name: str, base_url: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "base_url": base_url, **FAST, **fields}


def start_proxy(start_server: Any, config: Any, **env: str) -> ServerProcess:
    """A real ``python -m spaceserve`` in proxy mode; probes off and cooldown out of the way unless asked."""
    settings = {
        "SPACE_TEMPLATE": "proxy",
        "UPSTREAMS": json.dumps(config),
        "UPSTREAM_PROBE_INTERVAL": "0",
        "UPSTREAM_COOLDOWN_FAILURES": "1000",
        **env,
    }
    server: ServerProcess = start_server(wait="listening", **settings)
    return server


def health(proxy: ServerProcess) -> dict[str, dict[str, Any]]:
    """The proxy's /health, upstreams by name."""
    body = httpx.get(proxy.url + "/health", timeout=5).json()
    return {row["name"]: row for row in body["upstreams"]}


def chat(proxy: ServerProcess, model: str, *, key: str | None = None, **fields: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, **fields}
    return httpx.post(proxy.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)


def sse_data(text: str) -> list[str]:
    """The data payloads of an SSE body, in order."""
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
