"""The front page in headless Chromium against the real server on the embedded model.

Debian's ``chromium`` driven by Playwright's Python package (which downloads no browser of its
own). `.ci/run` installs the browser; on a machine without it the module is skipped.
Screenshots go to ``artifacts/screenshots/`` for a person to look at.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, Route, expect, sync_playwright

from ..support.proxy import FakeUpstream, closed_port_url, start_proxy, upstream
from ..support.proxy import chat as proxy_chat
from ..support.servers import MODEL_ID, REPO, ServerProcess

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: install Debian's chromium package (`apt-get install chromium`; .ci/run does)",
        allow_module_level=True,
    )

KEY = "front-page-test-key"
SCREENSHOTS = REPO / "artifacts" / "screenshots"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 90_000  # a reply on a busy 2-core machine can take a while
# A base model at temperature 0 settles into a loop, so a long reply is certain.
LONG_PROMPT = "Write a short poem about the sea."


@dataclass
class Recorder:
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def external(self) -> list[str]:
        return [
            u
            for u in self.requests
            if urlsplit(u).scheme in ("http", "https", "ws", "wss") and urlsplit(u).hostname not in LOOPBACK
        ]


class BlankPage(BaseHTTPRequestHandler):
    """Serves an empty page: the origin another site's script runs in."""

    def do_GET(self) -> None:
        body = b"<!doctype html><meta charset=utf-8><title>another site</title><p>another site"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class Origins:
    allowed: str
    refused: str


@pytest.fixture(scope="module")
def other_origins() -> Iterator[Origins]:
    """Two sites on other origins (other ports): the server allows the first only."""
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), BlankPage) for _ in range(2)]
    for http_server in servers:
        threading.Thread(target=http_server.serve_forever, daemon=True).start()
    allowed, refused = (f"http://127.0.0.1:{http_server.server_address[1]}" for http_server in servers)
    yield Origins(allowed, refused)
    for http_server in servers:
        http_server.shutdown()
        http_server.server_close()


@pytest.fixture(scope="module")
def keyed_server(start_server: Callable[..., ServerProcess], other_origins: Origins) -> ServerProcess:
    return start_server(API_KEYS=KEY, PARALLEL_SLOTS="2", CONTEXT_SIZE="2048", CORS_ALLOW_ORIGINS=other_origins.allowed)


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1000, "height": 900},
        )
        context.set_default_timeout(30_000)
        yield context
        context.close()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def page(browser_context: BrowserContext, recorder: Recorder) -> Iterator[Page]:
    page = browser_context.new_page()
    page.on("console", lambda m: recorder.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: recorder.console_errors.append(f"uncaught: {exc}"))
    page.on("request", lambda r: recorder.requests.append(r.url))
    yield page
    page.close()


def open_ready(page: Page, server: ServerProcess) -> None:
    page.goto(server.url + "/")
    expect(page.locator("#state")).to_have_attribute("data-state", "ok")


def fill_prompt(page: Page, *, key: str, max_tokens: int, message: str = LONG_PROMPT) -> None:
    page.fill("#api-key", key)
    page.fill("#message", message)
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#temperature", "0")


def health(server: ServerProcess) -> dict[str, object]:
    body: dict[str, object] = httpx.get(server.url + "/health", timeout=5).json()
    return body


def test_page_loads_ready_with_model_and_snippets(page: Page, recorder: Recorder, keyed_server: ServerProcess) -> None:
    open_ready(page, keyed_server)
    expect(page.locator("#state")).to_have_text("Ready")
    expect(page.locator("#d-model")).to_have_text(MODEL_ID)
    expect(page.locator("#d-context")).to_have_text("2048")
    expect(page.locator("#d-threads")).to_have_text("2")
    expect(page.locator("#d-active")).to_have_text("0")
    expect(page.locator("#base-url")).to_have_text(keyed_server.url + "/v1")
    expect(page.locator("#model")).to_have_value(MODEL_ID)
    curl = page.text_content("#curl-snippet")
    python = page.text_content("#python-snippet")
    assert f"curl {keyed_server.url}/v1/chat/completions" in curl
    assert f'base_url="{keyed_server.url}/v1"' in python
    for snippet in (curl, python):
        assert MODEL_ID in snippet and "YOUR_API_KEY" in snippet
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "front-page-ready.png"), full_page=True)

    # Phone size: nothing wider than the screen, every control reachable.
    page.set_viewport_size({"width": 375, "height": 740})
    scroll_width, inner_width = page.evaluate("[document.scrollingElement.scrollWidth, innerWidth]")
    assert scroll_width <= inner_width
    page.screenshot(path=str(SCREENSHOTS / "front-page-phone.png"), full_page=True)

    assert recorder.console_errors == []
    assert recorder.external() == []
    assert any(u.endswith("/static/app.js") for u in recorder.requests)


def test_a_prompt_streams_a_reply_with_live_figures(
    page: Page, recorder: Recorder, keyed_server: ServerProcess
) -> None:
    open_ready(page, keyed_server)
    fill_prompt(page, key=KEY, max_tokens=40)
    # Record the reply's length each time the text changes, with the time.
    page.evaluate(
        """() => {
        window.__growth = [];
        const reply = document.getElementById('reply');
        new MutationObserver(() => window.__growth.push([performance.now(), reply.textContent.length]))
            .observe(reply, {characterData: true, childList: true, subtree: true});
    }"""
    )
    page.click("#send")
    expect(page.locator("#stop")).to_be_enabled()
    expect(page.locator("#reply")).to_have_attribute("data-state", "done", timeout=WAIT_MS)

    text = page.text_content("#reply")
    assert text and text.strip()
    growth = page.evaluate("window.__growth")
    lengths = [length for _, length in growth if length > 0]
    # Streamed, not delivered at once: many growing lengths, spread over time.
    assert len(set(lengths)) >= 5, growth
    assert lengths == sorted(lengths)
    assert growth[-1][0] - min(t for t, length in growth if length > 0) > 50, growth

    assert re.fullmatch(r"\d+\.\d\d s", page.text_content("#f-ttft"))
    assert float(page.text_content("#f-tps")) > 0
    finish = page.text_content("#f-finish")
    tokens = int(page.text_content("#f-tokens"))
    assert finish in ("stop", "length")
    assert 0 < tokens <= 40 and (finish == "stop" or tokens == 40)
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()

    # The key lives in session storage only and never reaches the snippets.
    assert page.evaluate("sessionStorage.getItem('spaceserve.apiKey')") == KEY
    assert page.evaluate("localStorage.length") == 0
    assert KEY not in page.text_content("#usage")

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "front-page-reply.png"), full_page=True)
    assert recorder.console_errors == []
    assert recorder.external() == []


def test_stop_ends_the_stream_and_the_server_frees_the_sequence(
    page: Page, recorder: Recorder, keyed_server: ServerProcess
) -> None:
    open_ready(page, keyed_server)
    fill_prompt(page, key=KEY, max_tokens=1500)
    page.click("#send")
    page.wait_for_function("() => document.getElementById('reply').textContent.length > 20", timeout=WAIT_MS)
    assert health(keyed_server)["active"] == 1, "the reply should still be generating"

    page.click("#stop")
    expect(page.locator("#reply")).to_have_attribute("data-state", "stopped")
    expect(page.locator("#f-finish")).to_have_text("stopped")
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()
    expect(page.locator("#error")).to_be_hidden()
    stopped_at = len(page.text_content("#reply"))

    deadline = time.monotonic() + 15
    while health(keyed_server)["active"] != 0:
        assert time.monotonic() < deadline, f"the server kept generating after the stop: {health(keyed_server)}"
        time.sleep(0.1)
    assert len(page.text_content("#reply")) == stopped_at
    assert recorder.console_errors == []
    assert recorder.external() == []


def test_a_wrong_key_shows_the_401_sentence(page: Page, keyed_server: ServerProcess) -> None:
    open_ready(page, keyed_server)
    for key, submit in (("not-the-key", "click"), ("", "keyboard")):
        fill_prompt(page, key=key, max_tokens=8)
        if submit == "click":
            page.click("#send")
        else:
            page.focus("#message")
            page.keyboard.press("Control+Enter")
        expect(page.locator("#error")).to_have_text(
            "The API key was refused: it is wrong or missing. Enter the key this Space was given."
        )
        expect(page.locator("#reply")).to_have_attribute("data-state", "failed")
        expect(page.locator("#send")).to_be_enabled()


@pytest.mark.parametrize(
    ("status", "headers", "body", "sentence"),
    [
        (
            429,
            {"Retry-After": "7"},
            {"error": {"message": "queue full", "type": "rate_limit_error", "code": None}},
            "The server is busy with other requests. Try again in 7 s.",
        ),
        (
            503,
            {"Retry-After": "5"},
            {"error": {"message": "loading", "type": "server_error", "code": "model_loading"}},
            "The model is still loading. Try again in 5 s.",
        ),
    ],
)
def test_busy_and_loading_answers_become_sentences(
    page: Page, keyed_server: ServerProcess, status: int, headers: dict[str, str], body: object, sentence: str
) -> None:
    # These states are hard to bring about on demand in the real server; the answers are the server's shapes.
    page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(
            status=status, headers=headers, content_type="application/json", body=json.dumps(body)
        ),
    )
    open_ready(page, keyed_server)
    fill_prompt(page, key=KEY, max_tokens=8)
    page.click("#send")
    expect(page.locator("#error")).to_have_text(sentence)


def test_status_polls_while_loading_then_stops(page: Page, keyed_server: ServerProcess) -> None:
    calls: list[str] = []

    def health_route(route: Route) -> None:
        calls.append("health")
        if len(calls) <= 2:
            route.fulfill(status=503, content_type="application/json", body='{"status": "loading"}')
        else:
            route.continue_()

    page.route("**/health", health_route)
    page.goto(keyed_server.url + "/")
    expect(page.locator("#state")).to_have_text("Loading the model…")
    expect(page.locator("#state")).to_have_attribute("data-state", "ok", timeout=15_000)
    expect(page.locator("#d-model")).to_have_text(MODEL_ID)
    settled = len(calls)
    # A ready page does not poll: an open tab must not keep a sleeping Space awake.
    page.wait_for_timeout(3000)
    assert len(calls) == settled == 3


def test_a_failed_model_shows_its_reason(page: Page, keyed_server: ServerProcess) -> None:
    body = {"status": "error", "reason": "the model file /data/x.gguf does not exist"}
    page.route(
        "**/health", lambda route: route.fulfill(status=503, content_type="application/json", body=json.dumps(body))
    )
    page.goto(keyed_server.url + "/")
    expect(page.locator("#state")).to_have_text("Failed")
    expect(page.locator("#reason")).to_have_text(body["reason"])
    expect(page.locator("#details")).to_be_hidden()


def test_on_the_proxy_the_page_shows_each_upstream_and_chats_through_it(
    page: Page, recorder: Recorder, start_server: Callable[..., ServerProcess]
) -> None:
    good = FakeUpstream("ok", name="good")
    try:
        config = {
            "upstreams": [upstream("refused", closed_port_url()), upstream("good", good.url)],
            "aliases": {"coder": ["refused", "good"]},
        }
        proxy = start_proxy(
            start_server, config, API_KEYS=KEY, UPSTREAM_COOLDOWN_FAILURES="1", UPSTREAM_COOLDOWN_PERIOD="600"
        )
        # One request: 'refused' fails (and cools down for 10 minutes), 'good' serves it.
        assert proxy_chat(proxy, "coder", key=KEY).headers["x-upstream"] == "good"

        page.goto(proxy.url + "/")
        expect(page.locator("#state")).to_have_text("Degraded")
        expect(page.locator("#reason")).to_have_text("1 of 2 upstreams not healthy: refused")
        expect(page.locator("#details")).to_be_hidden()
        table = page.locator("#upstreams table")
        expect(table).to_be_visible()
        expect(table.locator("thead th")).to_have_text(
            ["Upstream", "State", "In flight", "Requests", "Failures", "Cooldown left", "Last error"]
        )
        refused, served = (table.locator("tbody tr").nth(i).locator("th, td") for i in (0, 1))
        expect(refused.nth(0)).to_have_text("refused")
        expect(refused.nth(1)).to_have_text("cooling")
        expect(refused.nth(3)).to_have_text("1")
        expect(refused.nth(4)).to_have_text("1")
        expect(refused.nth(5)).to_have_text(re.compile(r"^(59\d|600)\.\d s$"))
        expect(refused.nth(6)).to_contain_text("connection failed")
        expect(served).to_have_text(["good", "healthy", "0", "1", "0", "–", "–"])
        expect(page.locator("#model")).to_have_value("coder")
        expect(page.locator("#base-url")).to_have_text(proxy.url + "/v1")

        # The playground goes through the proxy: the reply and its usage come from 'good'.
        fill_prompt(page, key=KEY, max_tokens=8, message="Say hi.")
        page.click("#send")
        expect(page.locator("#reply")).to_have_attribute("data-state", "done", timeout=WAIT_MS)
        expect(page.locator("#reply")).to_have_text("ok from good")
        expect(page.locator("#f-tokens")).to_have_text("4")  # the upstream's usage chunk, relayed
        expect(served.nth(3)).to_have_text("2")  # the page refreshed /health after the reply
        assert good.completions()[-1].body["stream"] is True
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "front-page-proxy.png"), full_page=True)
        assert recorder.console_errors == []
        assert recorder.external() == []
    finally:
        good.stop()


# Another site's script: fetch() with a key in a header (so the browser sends a preflight), stream
# the answer and read it chunk by chunk, as a browser app calling the Space directly does.
CALL_FROM_THE_PAGE = """async ({url, headers, body}) => {
    let response;
    try {
        response = await fetch(url, {method: 'POST', headers, body: JSON.stringify(body)});
    } catch (error) {
        return {failed: String(error)};
    }
    const result = {
        status: response.status,
        requestId: response.headers.get('X-Request-Id'),
        chunks: 0,
        text: '',
        done: false,
        error: null,
    };
    if (!response.ok) {
        result.error = (await response.json()).error;
        return result;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
        const {done, value} = await reader.read();
        if (done) break;
        result.chunks += 1;
        buffer += decoder.decode(value, {stream: true});
    }
    for (const line of buffer.split('\\n')) {
        if (!line.startsWith('data: ')) continue;
        const data = line.slice(6);
        if (data === '[DONE]') { result.done = true; continue; }
        result.text += JSON.parse(data).choices[0]?.delta?.content ?? '';
    }
    return result;
}"""


def call_from(page: Page, origin: str, server: ServerProcess, headers: dict[str, str]) -> dict[str, object]:
    page.goto(origin + "/")
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": LONG_PROMPT}],
        "max_tokens": 24,
        "temperature": 0,
        "stream": True,
    }
    request = {"url": server.url + "/v1/chat/completions", "headers": headers, "body": body}
    result: dict[str, object] = page.evaluate(CALL_FROM_THE_PAGE, request)
    return result


def test_a_page_on_another_origin_streams_an_answer_with_a_key(
    page: Page, recorder: Recorder, keyed_server: ServerProcess, other_origins: Origins
) -> None:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    result = call_from(page, other_origins.allowed, keyed_server, headers)
    assert result["status"] == 200, result
    assert result["done"] and str(result["text"]).strip(), result
    assert int(str(result["chunks"])) >= 2, "the answer should arrive in pieces"
    assert result["requestId"], "X-Request-Id should be readable (exposed) from another origin"
    # The preflight went to the server and was answered without a key.
    assert '"method":"OPTIONS","route":"/v1/chat/completions","status":200' in keyed_server.log()
    assert recorder.console_errors == []


def test_a_refused_key_is_readable_from_another_origin(
    page: Page, keyed_server: ServerProcess, other_origins: Origins
) -> None:
    headers = {"Content-Type": "application/json", "X-API-Key": "not-the-key"}
    result = call_from(page, other_origins.allowed, keyed_server, headers)
    assert result["status"] == 401, result
    error = result["error"]
    assert isinstance(error, dict) and error["code"] == "invalid_api_key"


def test_a_page_on_an_origin_not_allowed_is_blocked(
    page: Page, recorder: Recorder, keyed_server: ServerProcess, other_origins: Origins
) -> None:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    result = call_from(page, other_origins.refused, keyed_server, headers)
    assert "failed" in result and "Failed to fetch" in str(result["failed"]), result
    assert any("CORS" in message for message in recorder.console_errors), recorder.console_errors
