"""Start-up: health from loading to ready, failed loads reported, every model source, settings errors."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from spaceserve.engine.engine import LlamaEngine
from spaceserve.model.app import create_app
from spaceserve.settings import ModelSettings

from ..support.servers import MODEL_ID, REPO, ServerProcess
from .test_errors import CHAT, assert_openai_error

REPO_ID = "test-owner/tiny-gguf"
KEY = "sk-loading-test"
FILENAME = "model-q4_k_m.gguf"


@pytest.mark.anyio
async def test_health_goes_from_loading_to_ready(model_path: Path) -> None:
    """The real engine behind a gate: health says loading (503) until the model is loaded and warm."""
    gate = threading.Event()
    settings = ModelSettings(
        model_source=str(model_path), context_size=512, parallel_slots=1, cpu_cores=2, api_keys=KEY
    )

    def gated_load() -> LlamaEngine:
        gate.wait(timeout=60)
        return LlamaEngine.load(settings, MODEL_ID)

    app = create_app(settings, loader=gated_load)
    auth = {"Authorization": f"Bearer {KEY}"}
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            loading = await http.get("/health")
            assert loading.status_code == 503 and loading.json() == {"status": "loading"}
            refused = await http.post("/v1/chat/completions", json=CHAT, headers=auth)
            assert_openai_error(refused, 503, "model_loading")
            assert refused.headers["retry-after"]
            # A client that retries every 503 at once: each refusal is a header check, the body is
            # never read (a malformed one still gets the 503, not a 400), a wrong key still a 401.
            storm = await asyncio.gather(
                *(http.post("/v1/chat/completions", content=b"{not json" * 5000, headers=auth) for _ in range(300))
            )
            assert {r.status_code for r in storm} == {503}
            assert {r.json()["error"]["code"] for r in storm} == {"model_loading"}
            wrong = await http.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer nope"})
            assert_openai_error(wrong, 401, "invalid_api_key")
            gate.set()
            for _ in range(600):
                ready = await http.get("/health")
                if ready.status_code == 200:
                    break
                await asyncio.sleep(0.05)
            body = ready.json()
            assert body["status"] == "ok"
            assert body["model"] == MODEL_ID and body["context_size"] == 512 and body["threads"] == 2
            answer = await http.post("/v1/chat/completions", json=CHAT, headers=auth)
            assert answer.status_code == 200
            malformed = await http.post("/v1/chat/completions", content=b"{not json", headers=auth)
            assert_openai_error(malformed, 400)  # once ready, the body is read and judged


def failed_health(server: ServerProcess) -> dict[str, object]:
    import time

    for _ in range(200):
        response = httpx.get(server.url + "/health")
        if response.json()["status"] != "loading":
            break
        time.sleep(0.05)
    assert response.status_code == 500  # will never serve: not a 503 that clients retry forever
    body: dict[str, object] = response.json()
    assert body["status"] == "error"
    return body


def test_missing_file_is_reported_and_the_process_stays_up(start_server: object, tmp_path: Path) -> None:
    server: ServerProcess = start_server(wait="listening", MODEL_SOURCE=str(tmp_path / "nope.gguf"))  # type: ignore[operator]
    body = failed_health(server)
    assert "MODEL_SOURCE" in str(body["reason"]) and "nope.gguf" in str(body["reason"])
    error = assert_openai_error(httpx.post(server.url + "/v1/chat/completions", json=CHAT), 500, "model_load_failed")
    assert "MODEL_SOURCE" in error["message"]
    assert server.proc.poll() is None


def test_file_that_is_not_gguf_is_reported(start_server: object, tmp_path: Path) -> None:
    bogus = tmp_path / "notes.gguf"
    bogus.write_text("this is not a model\n")
    server: ServerProcess = start_server(wait="listening", MODEL_SOURCE=str(bogus))  # type: ignore[operator]
    reason = str(failed_health(server)["reason"])
    assert "not a GGUF" in reason and "MODEL_SOURCE" in reason


def test_corrupt_gguf_is_reported(start_server: object, model_path: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "truncated.gguf"
    with model_path.open("rb") as source:
        corrupt.write_bytes(source.read(1_000_000))  # valid header, missing tensors
    server: ServerProcess = start_server(wait="listening", MODEL_SOURCE=str(corrupt))  # type: ignore[operator]
    reason = str(failed_health(server)["reason"])
    assert "could not load" in reason and "MODEL_SOURCE" in reason
    assert server.proc.poll() is None


def make_hub_cache(hf_home: Path, model_path: Path) -> None:
    """The layout huggingface_hub writes: blobs, a snapshot that links to them, refs/main."""
    repo_dir = hf_home / "hub" / ("models--" + REPO_ID.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    blob = repo_dir / "blobs" / "f00dfeed"
    blob.parent.mkdir(parents=True)
    os.link(model_path, blob) if model_path.stat().st_dev == blob.parent.stat().st_dev else shutil.copy(
        model_path, blob
    )
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / FILENAME).symlink_to(Path("../../blobs/f00dfeed"))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)


def test_hub_source_loads_offline_from_the_cache(start_server: object, model_path: Path, tmp_path: Path) -> None:
    make_hub_cache(tmp_path / "hf", model_path)
    server: ServerProcess = start_server(  # type: ignore[operator]
        MODEL_SOURCE=f"hf://{REPO_ID}/{FILENAME}",
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_OFFLINE="1",
        MODEL_ID="from-the-hub",
        CHAT_TEMPLATE="gemma",
        CONTEXT_SIZE="512",
        PARALLEL_SLOTS="1",
    )
    assert httpx.get(server.url + "/health").json()["model"] == "from-the-hub"
    reply = server.client().chat.completions.create(model="from-the-hub", messages=CHAT["messages"], max_tokens=3)
    assert reply.usage is not None and reply.usage.completion_tokens == 3


def test_hub_source_offline_with_empty_cache(start_server: object, tmp_path: Path) -> None:
    server: ServerProcess = start_server(  # type: ignore[operator]
        wait="listening",
        MODEL_SOURCE=f"hf://{REPO_ID}/{FILENAME}",
        HF_HOME=str(tmp_path / "empty"),
        HF_HUB_OFFLINE="1",
    )
    reason = str(failed_health(server)["reason"])
    assert "not in the local cache" in reason and "MODEL_SOURCE" in reason


class HubFailures(BaseHTTPRequestHandler):
    """Answers like the Hub does for a gated repo, a missing repo and a missing file."""

    def do_HEAD(self) -> None:
        self.answer()

    def do_GET(self) -> None:
        self.answer()

    def answer(self) -> None:
        if "/gated/" in self.path:
            status, code = 401, "GatedRepo"
        elif "/missing-repo/" in self.path:
            status, code = 404, "RepoNotFound"
        else:
            status, code = 404, "EntryNotFound"
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def fake_hub() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), HubFailures)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.mark.parametrize(
    ("repo", "fragments"),
    [
        ("owner/gated", ("gated", "HF_TOKEN")),
        ("owner/missing-repo", ("was not found", "MODEL_SOURCE")),
        ("owner/present", ("has no file", "MODEL_SOURCE")),
    ],
)
def test_hub_failures_name_the_setting(fake_hub: str, tmp_path: Path, repo: str, fragments: tuple[str, str]) -> None:
    script = (
        "from spaceserve.engine.source import resolve_model_path, ModelSourceError\n"
        "try:\n"
        f"    resolve_model_path('hf://{repo}/{FILENAME}', hf_token=None, cache_dir=None)\n"
        "except ModelSourceError as exc:\n"
        "    print(exc)\n"
    )
    env = {
        **os.environ,
        "HF_ENDPOINT": fake_hub,
        "HF_HOME": str(tmp_path),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_ETAG_TIMEOUT": "5",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    for fragment in fragments:
        assert fragment in out.stdout, out.stdout + out.stderr


def test_bad_setting_stops_start_up_naming_the_variable() -> None:
    env = {**os.environ, "PARALLEL_SLOTS": "lots", "PORT": "0"}
    out = subprocess.run(
        [sys.executable, "-m", "spaceserve"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert "PARALLEL_SLOTS" in out.stderr and "lots" in out.stderr


def test_secret_settings_are_not_echoed_on_error() -> None:
    env = {**os.environ, "API_KEYS": "sk-secret-value", "PORT": "not-a-port"}
    out = subprocess.run(
        [sys.executable, "-m", "spaceserve"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and "PORT" in out.stderr
    assert "sk-secret-value" not in out.stderr + out.stdout


def test_threads_follow_cpu_cores_and_fall_back_to_usable_cores() -> None:
    assert ModelSettings(cpu_cores=3).threads() == 3
    assert ModelSettings(cpu_cores=None).threads() == len(os.sched_getaffinity(0))


def test_quickstart_serves_the_embedded_model(server: ServerProcess) -> None:
    health = httpx.get(server.url + "/health").json()
    assert health["model"] == MODEL_ID and health["chat_template"] == "gemma"
