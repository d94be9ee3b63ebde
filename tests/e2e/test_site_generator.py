"""A site generator's real requests against the primary template's settings.

The shapes are DeepSite's (a Next.js site generator, read from its public source): one system
message of rules (about 5,700 characters for a new page; about 8,300 plus every page's whole HTML
for an edit), the user's instruction, ``max_tokens: 16384``, the provider's model name, streamed
through ``@huggingface/inference`` or the ``openai`` client. The embedded Gemma 3 270M stands in for
the 1.3B coder (with its own chat template; everything else is the template's settings).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from bench.prompts import EDIT_RULES, rules
from bench.prompts import page_kb as page

from ..support.servers import REPO, ServerProcess
from .test_errors import assert_openai_error

KEY = "sk-site-generator-test"
SERVED = "deepseek-coder-1.3b-instruct"  # MODEL_ID of the primary template
PROVIDER_MODEL = "deepseek-ai/DeepSeek-V3-0324:novita"
JS_DIR = REPO / "tests" / "support" / "js"


def edit_messages(kilobytes: int) -> list[dict[str, str]]:
    system = rules(8300, EDIT_RULES) + "\n\nThe current page, index.html:\n\n" + page(kilobytes)
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": "Make the order buttons green and add a footer with the opening hours."},
    ]


@pytest.fixture(scope="module")
def primary(start_server: Any, model_path: Path) -> ServerProcess:
    server: ServerProcess = start_server(
        SPACE_TEMPLATE="primary", MODEL_SOURCE=str(model_path), CHAT_TEMPLATE="auto", API_KEYS=KEY
    )
    return server


@pytest.fixture(scope="module")
def client(primary: ServerProcess) -> OpenAI:
    return primary.client(api_key=KEY, timeout=300)


def stream_some(client: OpenAI, messages: list[dict[str, str]], chunks: int = 24, **extra: Any) -> tuple[str, set[str]]:
    """Stream a reply, as the generator does, and leave after ``chunks`` content chunks."""
    text, models = "", set()
    stream = client.chat.completions.create(
        model=extra.pop("model", PROVIDER_MODEL), messages=messages, max_tokens=16384, stream=True, **extra
    )
    seen = 0
    for chunk in stream:
        models.add(chunk.model)
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
            seen += 1
            if seen >= chunks:
                break
    stream.close()
    return text, models


def prompt_tokens(client: OpenAI, messages: list[dict[str, str]]) -> int:
    reply = client.chat.completions.create(model=PROVIDER_MODEL, messages=messages, max_tokens=1)
    assert reply.usage is not None
    return reply.usage.prompt_tokens


def test_new_page_request_streams_under_a_provider_model_name(client: OpenAI) -> None:
    messages = [
        {"role": "system", "content": rules(5700)},
        {"role": "user", "content": "Create a landing page for a bakery called Crumb & Co."},
    ]
    text, models = stream_some(client, messages)
    assert text.strip()
    assert models == {SERVED}  # responses name the model that answered


def test_edit_with_a_17_kb_page_in_the_system_prompt_streams(client: OpenAI) -> None:
    messages = edit_messages(17)
    assert prompt_tokens(client, messages) > 4096  # would not have fit the old 4,096-token context
    text, _ = stream_some(client, messages, model="dummy")  # huggingface_hub's client without a model
    assert text.strip()


def test_older_edit_shape_non_streamed_with_the_page_as_an_assistant_turn(client: OpenAI) -> None:
    messages = [
        {"role": "system", "content": rules(5700, EDIT_RULES)},
        {"role": "assistant", "content": page(6)},
        {"role": "user", "content": "Change the title to Crumb & Co. and keep everything else."},
    ]
    # Non-streamed with max_tokens 16384: the request's own timeout bounds the test, and the reply
    # then ends with finish_reason "length" and whatever was generated.
    reply = client.chat.completions.create(
        model=PROVIDER_MODEL, messages=messages, max_tokens=16384, temperature=0, extra_body={"timeout": 30}
    )
    assert reply.model == SERVED
    assert reply.choices[0].message.content and reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.prompt_tokens > 2000


def test_an_edit_that_does_not_fit_at_all_is_400_with_both_numbers(client: OpenAI, primary: ServerProcess) -> None:
    body = {"model": PROVIDER_MODEL, "messages": edit_messages(80), "max_tokens": 16384}
    response = httpx.post(
        primary.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=120
    )
    error = assert_openai_error(response, 400, "context_length_exceeded")
    numbers = [int(w) for w in error["message"].replace(",", " ").split() if w.isdigit()]
    assert 16384 in numbers and any(n > 16384 for n in numbers), error["message"]
    assert stream_some(client, edit_messages(6), chunks=2)[0]  # and the next request is served


def test_models_lists_the_served_model_not_the_wildcard(client: OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [SERVED]


@pytest.fixture(scope="module")
def js_client() -> Path:
    """``@huggingface/inference`` from npm, at the version package-lock.json pins."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.fail("node and npm are needed for the JavaScript client tests (apt-get install nodejs npm)")
    if not (JS_DIR / "node_modules" / "@huggingface" / "inference").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True, capture_output=True)
    return JS_DIR / "hf_stream.mjs"


def run_js(script: Path, endpoint: str, request: dict[str, Any], tmp_path: Path, key: str = KEY) -> dict[str, Any]:
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps(request))
    node = shutil.which("node")
    assert node is not None
    done = subprocess.run(
        [node, str(script), endpoint, str(request_file), "20"],
        env={"SPACESERVE_KEY": key, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_huggingface_inference_js_streams_a_long_edit(js_client: Path, primary: ServerProcess, tmp_path: Path) -> None:
    """The generator's own client, pointed at the Space with ``endpointUrl``; it sends the provider's
    model name, or the URL itself when none is given."""
    named = run_js(
        js_client, primary.url, {"model": PROVIDER_MODEL, "messages": edit_messages(30), "max_tokens": 16384}, tmp_path
    )
    assert named["error"] is None and named["chunks"] == 20 and named["text"].strip()
    assert named["model"] == SERVED
    unnamed = run_js(js_client, primary.url, {"messages": edit_messages(6), "max_tokens": 16384}, tmp_path)
    assert unnamed["error"] is None and unnamed["text"].strip()


def test_huggingface_inference_js_sees_a_clear_error_for_a_wrong_key(
    js_client: Path, primary: ServerProcess, tmp_path: Path
) -> None:
    result = run_js(js_client, primary.url, {"messages": edit_messages(6)}, tmp_path, key="sk-wrong")
    assert result["error"] and "invalid API key" in result["error"]
