"""What an attacker on the open internet tried, each reproduced against a real server on loopback
(docs/security.md): unfinished and oversized request heads, connections held half-sent, a slow
body, a conversation big enough to stall the event loop, lone surrogates, the OpenAPI schema."""

from __future__ import annotations

import contextlib
import json
import resource
import select
import socket
import time
from pathlib import Path

import httpx
import psutil
import pytest

from ..support.proxy import closed_port_url, start_proxy, upstream
from ..support.servers import MODEL_ID, ServerProcess
from .test_errors import assert_openai_error

KEY = "sk-hardening-5e1b"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
MAX_CONNECTIONS = 16
HEADER_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def guarded(start_server: object, model_path: Path) -> ServerProcess:
    """Keys, default message and header limits, low connection and time limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Start it with a low soft limit on open files (children inherit it): it must raise its own.
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
    try:
        return start_server(  # type: ignore[operator, no-any-return]
            MODEL_SOURCE=str(model_path),
            API_KEYS=KEY,
            CONTEXT_SIZE="1024",
            PARALLEL_SLOTS="2",
            MAX_CONNECTIONS=str(MAX_CONNECTIONS),
            HTTP_HEADER_TIMEOUT=str(HEADER_TIMEOUT),
            HTTP_BODY_TIMEOUT="2",
        )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def roomy(start_server: object, model_path: Path) -> ServerProcess:
    """A public schema, and room for a huge conversation (MAX_MESSAGES raised)."""
    return start_server(  # type: ignore[operator, no-any-return]
        MODEL_SOURCE=str(model_path),
        API_KEYS=KEY,
        CONTEXT_SIZE="1024",
        PARALLEL_SLOTS="2",
        OPENAPI_PUBLIC="true",
        MAX_MESSAGES="20000",
    )


def connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def read_all(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection, which it must within ``timeout``."""
    deadline = time.monotonic() + timeout
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"the server kept the connection open; it sent {data[:200]!r}") from None
            if not chunk:
                break
            data += chunk
    return data


def assert_serving(server: ServerProcess) -> None:
    response = httpx.post(server.url + "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text


# -- request heads ---------------------------------------------------------------------------


def test_an_endless_header_is_cut_off_with_431_and_memory_stays_flat(guarded: ServerProcess) -> None:
    process = psutil.Process(guarded.pid)
    before = process.memory_info().rss
    sock = connect(guarded)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Flood: ")
    chunk, sent, limit = b"a" * 65536, 0, 16 * 1024 * 1024
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        while sent < limit:  # bounded: 16 MiB at most
            sock.sendall(chunk)
            sent += len(chunk)
    reply = read_all(sock, 10)
    sock.close()
    assert sent < limit, "the server read 16 MiB of one unfinished header"
    assert reply.startswith(b"HTTP/1.1 431"), reply[:200]
    assert b'"code": "request_header_fields_too_large"' in reply
    assert process.memory_info().rss - before < 8 * 1024 * 1024
    assert_serving(guarded)


def test_too_many_header_lines_are_431(guarded: ServerProcess) -> None:
    sock = connect(guarded)
    lines = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
    assert read_all(sock, 10).startswith(b"HTTP/1.1 431")
    sock.close()


def test_half_sent_requests_are_dropped_after_the_header_timeout(guarded: ServerProcess) -> None:
    process = psutil.Process(guarded.pid)
    fds_before = process.num_fds()
    held = []
    for _ in range(3 * MAX_CONNECTIONS):  # bounded: three times the connection limit
        sock = connect(guarded)
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        held.append(sock)
    try:
        # /health is exempt from the connection limit; everything else is refused until they go.
        health = httpx.get(guarded.url + "/health", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        busy = httpx.get(guarded.url + "/v1/models", headers=AUTH, timeout=10)
        assert assert_openai_error(busy, 503, "too_many_connections")["type"] == "service_unavailable"
        # The server ends each of them at HTTP_HEADER_TIMEOUT, without the client closing anything.
        replies = [read_all(sock, HEADER_TIMEOUT + 10) for sock in held]
    finally:
        for sock in held:
            sock.close()
    assert all(reply.startswith(b"HTTP/1.1 408") for reply in replies), {r[:40] for r in replies}
    models = httpx.get(guarded.url + "/v1/models", headers=AUTH, timeout=10)
    assert models.status_code == 200, models.text
    assert process.num_fds() <= fds_before + 4


def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(guarded: ServerProcess) -> None:
    sock = connect(guarded)
    # Sends nothing at all: closed at the header timeout, with no reply.
    assert read_all(sock, HEADER_TIMEOUT + 10) == b""
    sock.close()


def test_a_body_that_never_finishes_is_408_and_the_connection_closes(guarded: ServerProcess) -> None:
    sock = connect(guarded)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    sock.sendall(head.encode() + b'{"model": ')
    reply = read_all(sock, 15)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    error = json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]
    assert error["code"] == "request_timeout" and "HTTP_BODY_TIMEOUT" in error["message"]
    assert_serving(guarded)


def test_the_server_raised_its_open_files_limit(guarded: ServerProcess) -> None:
    soft, hard = psutil.Process(guarded.pid).rlimit(psutil.RLIMIT_NOFILE)
    assert soft == hard > 256


# -- one large request does not stall the others ---------------------------------------------


def test_too_many_messages_are_refused_naming_messages(guarded: ServerProcess) -> None:
    body = {**CHAT, "messages": [{"role": "user", "content": ""}] * 1001}
    response = httpx.post(guarded.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    error = assert_openai_error(response, 400)
    assert error["param"] == "messages" and "MAX_MESSAGES" in error["message"]


def test_health_answers_while_a_huge_conversation_is_prepared(roomy: ServerProcess) -> None:
    body = json.dumps({**CHAT, "messages": [{"role": "user", "content": ""}] * 16000}).encode()
    assert len(body) > 500_000
    sock = connect(roomy)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    time.sleep(0.2)  # let the server take the body in and start on it
    health = httpx.get(roomy.url + "/health", timeout=60)
    readable, _, _ = select.select([sock], [], [], 0)
    assert health.status_code == 200
    assert not readable, "/health waited for the large request"
    reply = read_all(sock, 120)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 400"), reply[:300]
    assert b"context_length_exceeded" in reply


# -- bodies --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "raw", "param"),
    [
        ("/v1/chat/completions", '{"model": "\\ud800", "messages": [{"role": "user", "content": "Hi"}]}', "model"),
        ("/v1/completions", f'{{"model": "{MODEL_ID}", "prompt": "\\udc80"}}', "prompt"),
        (
            "/v1/chat/completions",
            f'{{"model": "{MODEL_ID}", "messages": [{{"role": "user", "content": "a\\udc80b"}}]}}',
            "messages.0.content",
        ),
        (
            "/v1/chat/completions",
            f'{{"model": "{MODEL_ID}", "messages": [{{"role": "user", "content": [{{"type": "text", '
            '"text": "\\ud83d"}]}]}',
            "messages.0.content.0.text",
        ),
        ("/v1/completions", f'{{"model": "{MODEL_ID}", "prompt": "x", "stop": ["\\udfff"]}}', "stop.0"),
    ],
)
def test_a_lone_surrogate_is_a_400_naming_the_field(guarded: ServerProcess, path: str, raw: str, param: str) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    response = httpx.post(guarded.url + path, content=raw.encode(), headers=headers, timeout=60)
    error = assert_openai_error(response, 400)
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert "surrogate" in error["message"]
    assert_serving(guarded)


def test_a_paired_surrogate_escape_is_ordinary_text(guarded: ServerProcess) -> None:
    raw = f'{{"model": "{MODEL_ID}", "prompt": "\\ud83c\\udf89", "max_tokens": 1}}'.encode()
    headers = {**AUTH, "Content-Type": "application/json"}
    response = httpx.post(guarded.url + "/v1/completions", content=raw, headers=headers, timeout=60)
    assert response.status_code == 200, response.text


# -- the schema ----------------------------------------------------------------------------------


def test_the_openapi_schema_needs_a_key(guarded: ServerProcess) -> None:
    assert_openai_error(httpx.get(guarded.url + "/openapi.json", timeout=10), 401)
    schema = httpx.get(guarded.url + "/openapi.json", headers=AUTH, timeout=10)
    assert schema.status_code == 200
    assert "/v1/chat/completions" in schema.json()["paths"]
    for page in ("/docs", "/redoc"):
        assert httpx.get(guarded.url + page, headers=AUTH, timeout=10).status_code == 404


def test_openapi_public_serves_the_schema_without_a_key(roomy: ServerProcess) -> None:
    schema = httpx.get(roomy.url + "/openapi.json", timeout=10)
    assert schema.status_code == 200
    assert "/v1/completions" in schema.json()["paths"]
    assert httpx.get(roomy.url + "/v1/models", timeout=10).status_code == 401


# -- the proxy shares the base app and the entry point -------------------------------------------


def test_the_proxy_refuses_lone_surrogates_hides_its_schema_and_limits_heads(start_server: object) -> None:
    proxy = start_proxy(
        start_server, {"upstreams": [upstream("gone", closed_port_url())]}, API_KEYS=KEY, MAX_HEADERS="20"
    )
    headers = {**AUTH, "Content-Type": "application/json"}
    raw = b'{"model": "\\ud800", "messages": [{"role": "user", "content": "Hi"}]}'
    response = httpx.post(proxy.url + "/v1/chat/completions", content=raw, headers=headers, timeout=30)
    assert assert_openai_error(response, 400)["param"] == "model"
    assert_openai_error(httpx.get(proxy.url + "/openapi.json", timeout=10), 401)
    assert httpx.get(proxy.url + "/openapi.json", headers=AUTH, timeout=10).status_code == 200
    many = {f"X-H{i}": "v" for i in range(30)}
    assert_openai_error(httpx.get(proxy.url + "/health", headers=many, timeout=10), 431)
    proxy.stop()
