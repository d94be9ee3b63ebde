"""The front page's HTTP side, in process: the HTML, its assets and their content types.

The page's behaviour in a browser is tested in test_front_page_browser.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html.parser import HTMLParser

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from spaceserve.engine.types import Engine, ModelLoadError
from spaceserve.model.app import build_base_app, create_app
from spaceserve.proxy.app import create_proxy_app
from spaceserve.settings import ModelSettings, ProxySettings
from spaceserve.web import ASSETS, STATIC_DIR, include_front_page

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class PageParser(HTMLParser):
    """Collects ids, labels' targets and every URL the page refers to."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.label_for: set[str] = set()
        self.controls: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(str(a["id"]))
        if tag == "label" and a.get("for"):
            self.label_for.add(str(a["for"]))
        if tag in ("input", "textarea", "select"):
            self.controls.append(str(a.get("id")))
        for name in ("href", "src", "action"):
            if a.get(name):
                self.urls.append(str(a[name]))


def never_loads() -> Engine:
    raise ModelLoadError("no model in this test")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    settings = ModelSettings(model_source="embedded", api_keys=[], warmup=False)
    app = create_app(settings, loader=never_loads)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


async def test_root_serves_the_page_with_its_sections_and_labelled_fields(client: httpx.AsyncClient) -> None:
    response = await client.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp
    assert "frame-ancestors" not in csp, "Hugging Face shows the page in an iframe"

    page = PageParser()
    page.feed(response.text)
    expected = {
        "status",
        "state",
        "details",
        "upstreams",
        "usage",
        "base-url",
        "curl-snippet",
        "python-snippet",
        "playground",
        "chat-form",
        "system",
        "message",
        "max-tokens",
        "temperature",
        "api-key",
        "model",
        "send",
        "stop",
        "error",
        "reply",
        "f-ttft",
        "f-tps",
    }
    assert expected <= page.ids, expected - page.ids
    # Every form control has a label: the page is usable with a screen reader.
    assert page.controls and set(page.controls) <= page.label_for
    assert '<meta name="viewport"' in response.text
    # Relative URLs only: under the Space's iframe (or a path prefix) absolute ones would break.
    assert page.urls
    for url in page.urls:
        assert not re.match(r"^([a-z]+:)?//|^/", url), url


async def test_assets_are_served_with_their_content_types(client: httpx.AsyncClient) -> None:
    for name, media_type in ASSETS.items():
        response = await client.get(f"/static/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"] == media_type
        assert response.content == (STATIC_DIR / name).read_bytes()
        assert response.headers["cache-control"] == "no-cache"
    missing = await client.get("/static/nope.js")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"


async def test_assets_refer_to_nothing_outside_the_server() -> None:
    for name in ("app.js", "style.css"):
        text = (STATIC_DIR / name).read_text()
        assert "http://" not in text and "https://" not in text, name
        assert "@import" not in text and "url(" not in text, name


async def test_json_clients_still_get_the_json_index(client: httpx.AsyncClient) -> None:
    response = await client.get("/", headers={"Accept": "application/json"})
    assert response.status_code == 200
    body = response.json()
    assert body["service"] == "spaceserve model server"
    assert body["status"] in ("loading", "error")
    assert "/v1/chat/completions" in body["endpoints"]


async def test_another_app_can_include_the_page_without_a_json_index() -> None:
    # The proxy builds on build_base_app and includes the same page.
    @asynccontextmanager
    async def no_state(app: FastAPI) -> AsyncIterator[None]:
        yield

    app = build_base_app(ModelSettings(model_source="embedded", api_keys=[]), no_state, "another app")
    include_front_page(app)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        page = await http.get("/", headers={"Accept": "application/json"})
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert (await http.get("/static/app.js")).status_code == 200


async def test_the_proxy_serves_the_same_page_and_health_has_what_it_renders() -> None:
    upstreams = [{"name": "primary", "base_url": "http://127.0.0.1:9/v1", "model": "deepseek"}]
    settings = ProxySettings(upstreams=json.dumps(upstreams), api_keys=[], upstream_probe_interval=0)
    app = create_proxy_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            page = await http.get("/", headers={"Accept": "text/html"})
            assert page.status_code == 200
            assert page.headers["content-type"] == "text/html; charset=utf-8"
            assert page.text == (STATIC_DIR.parent / "index.html").read_text()
            assert (await http.get("/static/app.js")).status_code == 200
            index = (await http.get("/", headers={"Accept": "application/json"})).json()
            assert index["service"] == "spaceserve proxy" and index["models"] == ["deepseek"]
            # What app.js reads: status, a model for the playground, and a row per upstream.
            health = (await http.get("/health")).json()
            assert health["status"] == "ok" and health["models"] == ["deepseek"]
            [row] = health["upstreams"]
            assert {"name", "state", "in_flight", "counters", "cooldown_seconds", "last_error"} <= set(row)
            assert (row["name"], row["state"], row["cooldown_seconds"]) == ("primary", "healthy", 0)
