"""The classic Hugging Face text-generation format as an upstream kind.

``{"inputs": prompt, "parameters": {...}}`` in, ``[{"generated_text": ...}]`` out. Chat messages
become simple role-prefixed text because such endpoints take a plain prompt; the server behind
them applies no chat template.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from ..base.schemas import Endpoint
from ..base.sse import sse

_ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


class Unmappable(ValueError):
    """The request cannot be expressed in the text-generation format."""


def message_text(message: Any) -> str:
    if not isinstance(message, dict):
        raise Unmappable("messages must be objects")
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise Unmappable("only text content can be sent to a text-generation upstream")
            texts.append(part["text"])
        return "".join(texts)
    raise Unmappable("message content must be a string or a list of text parts")


def chat_prompt(messages: list[Any]) -> str:
    lines = []
    for message in messages:
        role = _ROLES.get(str(message.get("role")) if isinstance(message, dict) else "", "User")
        lines.append(f"{role}: {message_text(message)}")
    lines.append("Assistant:")
    return "\n".join(lines)


def to_payload(endpoint: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
    if endpoint == "chat":
        inputs = chat_prompt(body.get("messages") or [])
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise Unmappable("only a single text prompt can be sent to a text-generation upstream")
        inputs = prompt
    parameters: dict[str, Any] = {"return_full_text": False}
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int):
        parameters["max_new_tokens"] = limit
    temperature = body.get("temperature")
    if isinstance(temperature, int | float):
        # Text-generation servers refuse temperature 0; greedy decoding is how they say it.
        if temperature > 0:
            parameters["temperature"] = temperature
        else:
            parameters["do_sample"] = False
    top_p = body.get("top_p")
    if isinstance(top_p, int | float) and 0 < top_p < 1:
        parameters["top_p"] = top_p
    stop = body.get("stop")
    if isinstance(stop, str):
        parameters["stop"] = [stop]
    elif isinstance(stop, list) and stop:
        parameters["stop"] = stop
    return {"inputs": inputs, "parameters": parameters}


def generated_text(answer: Any) -> str:
    """Accept ``[{"generated_text": ...}]`` (Inference API) and ``{"generated_text": ...}`` (TGI /generate)."""
    if isinstance(answer, list) and answer:
        answer = answer[0]
    if isinstance(answer, dict) and isinstance(answer.get("generated_text"), str):
        return str(answer["generated_text"])
    raise ValueError("the response has no generated_text")


def to_openai(endpoint: Endpoint, text: str, model: str) -> dict[str, Any]:
    created = int(time.time())
    if endpoint == "chat":
        return {
            "id": "chatcmpl-" + uuid.uuid4().hex,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
        }
    return {
        "id": "cmpl-" + uuid.uuid4().hex,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
    }


def to_sse_events(endpoint: Endpoint, text: str, model: str) -> list[bytes]:
    """The whole answer as a stream: one content chunk, the finish chunk (``[DONE]`` comes from the relay)."""
    body = to_openai(endpoint, text, model)
    base = {key: body[key] for key in ("id", "created", "model")}
    if endpoint == "chat":
        obj = "chat.completion.chunk"
        content = {"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}
        finish = {"index": 0, "delta": {}, "finish_reason": "stop"}
    else:
        obj = "text_completion"
        content = {"index": 0, "text": text, "finish_reason": None}
        finish = {"index": 0, "text": "", "finish_reason": "stop"}
    return [sse({**base, "object": obj, "choices": [content]}), sse({**base, "object": obj, "choices": [finish]})]
