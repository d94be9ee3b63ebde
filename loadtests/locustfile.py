"""Locust users for an OpenAI-compatible spaceserve server (local or a deployed Space).

    LOADTEST_API_KEY=... locust -f loadtests/locustfile.py --host https://owner-space.hf.space

Environment: ``LOADTEST_API_KEY`` (sent as a Bearer key when set), ``LOADTEST_MODEL`` (default:
the first model of ``/v1/models``), ``LOADTEST_MAX_TOKENS`` (default 32).

Besides the HTTP entries, every completion adds two entries of its own to locust's statistics:
``TTFT <name>`` (time to first token; streaming users only) and ``TOKENS/S <name>``, whose
"response time" column is the request's generated tokens per second and whose "content size"
column is its generated tokens (so count x average size = all tokens generated).
"""

from __future__ import annotations

import csv
import json
import os
import time
from typing import Any

from locust import HttpUser, between, events, task
from locust.env import Environment
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

API_KEY = os.environ.get("LOADTEST_API_KEY", "")
MAX_TOKENS = int(os.environ.get("LOADTEST_MAX_TOKENS", "32"))
SITE_TIMEOUT = 90.0  # what the site-generator client allows a reply before it gives up

QUESTIONS = [
    "What is the capital of France?",
    "Explain what a hash map is in two sentences.",
    "Write a haiku about the sea.",
    "List three uses of a paper clip.",
    "Why is the sky blue?",
]

# About 1000 tokens of instructions, like the site generator's system prompt.
SITE_RULES = [
    "Return one complete HTML5 document, starting with <!DOCTYPE html> and ending with </html>.",
    "Put all CSS in a single <style> element inside <head>; do not link external stylesheets.",
    "Use semantic elements: <header>, <nav>, <main>, <section>, <article>, <aside> and <footer>.",
    "Define colours once as CSS custom properties on :root, for example --bg, --fg, --accent and --muted.",
    "Lay out the page with CSS grid for the overall structure and flexbox inside components.",
    "Make the layout responsive with a mobile-first approach and a breakpoint at 48rem and at 72rem.",
    "Use a system font stack: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif.",
    "Set line-height to 1.5 for body text and limit paragraphs to about 70 characters per line.",
    "Give every image an alt attribute that describes it; decorative images get an empty alt.",
    "Ensure colour contrast meets WCAG AA: 4.5:1 for body text and 3:1 for large text.",
    "Every interactive element must be reachable by keyboard and show a visible :focus-visible outline.",
    "Do not use JavaScript unless the user asks for interactivity; prefer <details> for disclosure.",
    "Buttons are <button> elements, links are <a> elements; never style a div as a button.",
    "Use rem units for font sizes and spacing, and px only for hairline borders.",
    "Add a skip link as the first focusable element that jumps to the <main> element.",
    "The navigation is an unordered list inside <nav> with aria-label='Main'.",
    "Headings go in order: one <h1> per page, then <h2> for sections, <h3> inside sections.",
    "Forms use <label for> with every input, and group related inputs with <fieldset> and <legend>.",
    "Honour prefers-reduced-motion: disable transitions and animations when it is set.",
    "Honour prefers-color-scheme: provide a dark palette through the same custom properties.",
    "Keep the CSS under 300 lines; group rules by component and comment each group briefly.",
    "Use placeholder text that fits the subject the user gives; never lorem ipsum.",
    "Cards have a subtle border, 0.5rem radius, 1rem padding and a hover state that lifts the shadow.",
    "Tables get a <caption>, <thead> with scope='col' headers, and zebra striping through nth-child.",
    "The footer holds a copyright line and a small list of links, centred on narrow screens.",
]
SITE_SYSTEM_PROMPT = (
    "You are a web designer who writes complete, accessible, responsive single-page websites.\n"
    "Follow every rule below exactly; when two rules conflict, the earlier rule wins.\n\n"
    + "\n".join(f"{i}. {rule}" for i, rule in enumerate(SITE_RULES * 2, 1))
    + "\n\nAnswer with the HTML document only, without explanations before or after it."
)
SITE_REQUESTS = [
    "A landing page for a small bakery in Lisbon.",
    "A portfolio page for a wildlife photographer.",
    "A page announcing a neighbourhood cycling event.",
]


class OpenAIUser(HttpUser):
    abstract = True
    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        self.headers = {"Authorization": f"Bearer {API_KEY}"} if API_KEY else {}
        self.model = os.environ.get("LOADTEST_MODEL") or self._first_model()
        self.turn = 0

    def _first_model(self) -> str:
        response = self.client.get("/v1/models", headers=self.headers, name="/v1/models")
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])

    def next_question(self) -> str:
        self.turn += 1
        return QUESTIONS[self.turn % len(QUESTIONS)]

    def record(self, kind: str, name: str, value_ms: float, length: int = 0) -> None:
        """An entry of our own in locust's statistics (TTFT, TOKENS/S)."""
        self.environment.events.request.fire(
            request_type=kind,
            name=name,
            response_time=value_ms,
            response_length=length,
            exception=None,
            context={},
        )

    def stream_chat(self, name: str, messages: list[dict[str, str]], max_tokens: int, timeout: float) -> None:
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        started = time.perf_counter()
        first_token: float | None = None
        chunks = 0
        usage: dict[str, Any] | None = None
        with self.client.post(
            "/v1/chat/completions",
            json=body,
            headers=self.headers,
            name=name,
            stream=True,
            catch_response=True,
            timeout=timeout,
        ) as response:
            if response.status_code != 200:
                response.failure(http_failure(response))
                return
            problem = None
            done = False
            try:
                for raw in response.iter_lines():
                    line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
                    if not line or line.startswith(":"):
                        continue
                    if not line.startswith("data: "):
                        problem = f"not an SSE data line: {line[:80]!r}"
                        break
                    data = line[len("data: ") :]
                    if data == "[DONE]":
                        done = True
                        break
                    event = json.loads(data)
                    if "error" in event:
                        problem = f"error event: {event['error'].get('code') or event['error'].get('type')}"
                        break
                    if event.get("usage"):
                        usage = event["usage"]
                    for choice in event.get("choices", []):
                        if choice.get("delta", {}).get("content"):
                            chunks += 1
                            if first_token is None:
                                first_token = time.perf_counter()
            except json.JSONDecodeError as exc:
                problem = f"bad JSON in the stream: {exc.msg}"
            except Exception as exc:  # a connection cut mid-stream, a read timeout
                problem = f"stream broke: {exc.__class__.__name__}: {exc}"
            # Locust timed the request when the headers came; a stream's latency is its whole length.
            response.request_meta["response_time"] = (time.perf_counter() - started) * 1000
            if problem is None and not done:
                problem = "stream ended without [DONE]"
            if problem is not None:
                response.failure(problem)
                return
            response.success()
        ended = time.perf_counter()
        tokens = int(usage["completion_tokens"]) if usage else chunks
        if first_token is not None:
            self.record("TTFT", name, (first_token - started) * 1000)
            generating = ended - first_token
            rate = tokens / generating if generating > 0 else 0.0
            self.record("TOKENS/S", name, rate, tokens)


class StreamingChatUser(OpenAIUser):
    """Short chat turns, streamed, as an interactive chat client sends them."""

    weight = 3

    @task
    def chat(self) -> None:
        messages = [{"role": "user", "content": self.next_question()}]
        self.stream_chat("chat stream", messages, MAX_TOKENS, timeout=120)


class NonStreamingChatUser(OpenAIUser):
    """The same turns without streaming: one JSON answer at the end."""

    weight = 1

    @task
    def chat(self) -> None:
        name = "chat"
        body = {"model": self.model, "messages": [{"role": "user", "content": self.next_question()}]}
        body["max_tokens"] = MAX_TOKENS
        started = time.perf_counter()
        with self.client.post(
            "/v1/chat/completions", json=body, headers=self.headers, name=name, catch_response=True, timeout=120
        ) as response:
            if response.status_code != 200:
                response.failure(http_failure(response))
                return
            try:
                reply = response.json()
                tokens = int(reply["usage"]["completion_tokens"])
                reply["choices"][0]["message"]["content"]  # a KeyError marks it failed
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                response.failure(f"malformed completion: {exc.__class__.__name__}: {exc}")
                return
            response.success()
        elapsed = time.perf_counter() - started
        self.record("TOKENS/S", name, tokens / elapsed if elapsed > 0 else 0.0, tokens)


class SiteGeneratorUser(OpenAIUser):
    """Like the site-generator client: a ~1000-token system prompt, a short request, 90 s timeout."""

    weight = 1
    wait_time = between(1.0, 3.0)

    @task
    def generate(self) -> None:
        self.turn += 1
        messages = [
            {"role": "system", "content": SITE_SYSTEM_PROMPT},
            {"role": "user", "content": SITE_REQUESTS[self.turn % len(SITE_REQUESTS)]},
        ]
        self.stream_chat("site generator", messages, max(MAX_TOKENS, 64), timeout=SITE_TIMEOUT)


def http_failure(response: Any) -> str:
    """``HTTP 429 queue_full`` and the like; the runner counts 429s by this prefix."""
    code = ""
    try:
        error = response.json()["error"]
        code = error.get("code") or error.get("type") or ""
    except Exception:
        code = "non-OpenAI error body"
    return f"HTTP {response.status_code} {code}".strip()


@events.quitting.add_listener
def write_final_csv(environment: Environment, **_: Any) -> None:
    """With ``--csv PREFIX``: write ``PREFIX_final_stats.csv`` and ``PREFIX_final_failures.csv`` once
    every user has stopped. Locust's own CSV files are rewritten every second, so requests that end
    during the stop timeout can miss them; these files have everything."""
    options = environment.parsed_options
    prefix = getattr(options, "csv_prefix", None) if options else None
    if not prefix or environment.runner is None:
        return
    writer = StatsCSV(environment, PERCENTILES_TO_REPORT)
    with open(f"{prefix}_final_stats.csv", "w", newline="") as handle:
        writer.requests_csv(csv.writer(handle))
    with open(f"{prefix}_final_failures.csv", "w", newline="") as handle:
        writer.failures_csv(csv.writer(handle))
