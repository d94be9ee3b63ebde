"""Run a server as a child process on a free loopback port, wait until it is ready, stop it, and make
the smoke call every deployment check ends with. One helper for the tests, the load tests, the
benchmark and the container check, so they clear the same variables and judge readiness alike.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from ..settings import ROOT_DIR

# Settings a developer's shell may carry that would change (or expose) a server under test.
SCRUBBED = frozenset(
    {
        "API_KEYS",
        "API_KEYS_FILE",
        "SPACE_ID",
        "SPACE_TEMPLATE",
        "MODEL_SOURCE",
        "MODEL_ID",
        "MODEL_ALIASES",
        "HF_TOKEN",
        "HOST",
        "PORT",
        "ALLOW_UNAUTHENTICATED",
        "RATE_LIMIT_RPM",
        "RATE_LIMIT_TPM",
        "RATE_LIMIT_OVERRIDES",
        "METRICS_PUBLIC",
        "OPENAPI_PUBLIC",
        "PARSE_SPECIAL_IN_PROMPT",
        "UPSTREAMS",
        "UPSTREAMS_FILE",
    }
)
SMOKE_MESSAGES = [{"role": "user", "content": "Say OK."}]


class ServerFailed(RuntimeError):
    """The server exited, reported an error on /health, or was not ready in time."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (the environment by default) without the settings that would change a server under test."""
    return {k: v for k, v in (os.environ if base is None else base).items() if k not in SCRUBBED}


class ServerProcess:
    """A server child process whose output goes to ``log_path``.

    With no ``command`` it is ``python -m spaceserve`` on 127.0.0.1:``port`` (a free one unless
    given), offline from the Hub, with 2 threads (what a cpu-basic Space has) unless ``env`` says
    otherwise. Readiness is ``/health`` answering 200; ``"status": "error"`` there fails at once.
    """

    def __init__(
        self,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        *,
        command: list[str] | None = None,
        port: int | None = None,
        cwd: Path = ROOT_DIR,
        base_env: Mapping[str, str] | None = None,
        python: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.cwd = cwd
        self.command = command or [python or sys.executable, "-m", "spaceserve"]
        self.env = clean_env(base_env)
        self.env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "CPU_CORES": "2"})
        self.env.update(env or {})
        # The address is this object's to choose (an image's own HOST and PORT are for its container).
        self.env.update({"HOST": "127.0.0.1", "PORT": str(self.port)})
        self.proc: subprocess.Popen[bytes] | None = None

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            # The command is this project's own server (or a benchmark's), never user input.
            self.proc = subprocess.Popen(  # noqa: S603
                self.command, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def __enter__(self) -> ServerProcess:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def stop(self, timeout: float = 20) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # -- waiting -------------------------------------------------------------------------------

    def log(self, tail: int | None = None) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-tail:] if tail else text

    def _check_alive(self) -> None:
        assert self.proc is not None, "not started"
        if self.proc.poll() is not None:
            raise ServerFailed(f"the server exited with {self.proc.returncode}:\n{self.log(4000)}")

    def wait_listening(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                httpx.get(self.url + "/health", timeout=2)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise ServerFailed(f"the server did not listen within {timeout:.0f}s:\n{self.log(4000)}")

    def wait_ready(self, timeout: float = 180, ready_statuses: tuple[int, ...] = (200,)) -> dict[str, Any]:
        """The body of the first ``/health`` whose status is in ``ready_statuses``."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                response = httpx.get(self.url + "/health", timeout=5)
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            try:
                last = response.json() if response.content else {}
            except ValueError:
                last = {}
            if response.status_code in ready_statuses:
                return last
            if isinstance(last, dict) and last.get("status") == "error":
                raise ServerFailed(f"/health reports an error: {last}\n{self.log(4000)}")
            time.sleep(0.1)
        raise ServerFailed(f"not ready within {timeout:.0f}s (last /health: {last}):\n{self.log(4000)}")


class SmokeFailed(Exception):
    """The smoke call's models list or chat completion did not answer as a model endpoint must."""


def smoke_call(client: httpx.Client, headers: Mapping[str, str]) -> tuple[str, int]:
    """``GET /v1/models`` then a tiny chat completion with its first model: ``(model, completion tokens)``."""
    models = client.get("/v1/models", headers=headers)
    if models.status_code != 200 or not models.json().get("data"):
        raise SmokeFailed(f"/v1/models answered {models.status_code}: {models.text[:300]}")
    model = str(models.json()["data"][0]["id"])
    reply = client.post(
        "/v1/chat/completions", headers=headers, json={"model": model, "messages": SMOKE_MESSAGES, "max_tokens": 8}
    )
    if reply.status_code != 200:
        raise SmokeFailed(f"chat completion answered {reply.status_code}: {reply.text[:300]}")
    data = reply.json()
    if data["choices"][0]["message"]["role"] != "assistant":
        raise SmokeFailed(f"chat completion without an assistant message: {data}")
    return model, int(data["usage"]["completion_tokens"])
