"""BodyLimitMiddleware on its own: a body cut short by the client never reaches the app."""

from __future__ import annotations

import pytest
from starlette.types import Message, Receive, Scope, Send

from spaceserve.base.bodylimit import BodyLimitMiddleware

SCOPE: Scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}


async def run(messages: list[Message]) -> tuple[list[bytes], list[Message]]:
    """Feed ``messages`` to the middleware; what the app read, and what went out."""
    seen: list[bytes] = []
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        seen.append(message["body"])

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await BodyLimitMiddleware(app, max_bytes=1024)(dict(SCOPE), receive, send)
    return seen, sent


@pytest.mark.anyio
async def test_a_body_cut_by_a_disconnect_is_not_passed_on() -> None:
    # The first half happens to be valid JSON on its own: it must still not pass for the request.
    seen, sent = await run(
        [
            {"type": "http.request", "body": b'{"model": "m", "prompt": "a"}', "more_body": True},
            {"type": "http.disconnect"},
        ]
    )
    assert seen == []
    assert sent[0]["status"] == 499


@pytest.mark.anyio
async def test_a_whole_chunked_body_is_replayed_in_one_piece() -> None:
    seen, sent = await run(
        [
            {"type": "http.request", "body": b'{"model": ', "more_body": True},
            {"type": "http.request", "body": b'"m"}', "more_body": False},
        ]
    )
    assert seen == [b'{"model": "m"}'] and sent == []
