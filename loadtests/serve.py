"""A spaceserve server on the embedded model, on a free loopback port, for load tests and fuzzing."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from spaceserve.containercheck import free_port

REPO = Path(__file__).resolve().parent.parent
# Settings a developer's shell may carry that would change (or expose) the server under test.
SCRUBBED = (
    "API_KEYS",
    "API_KEYS_FILE",
    "SPACE_ID",
    "SPACE_TEMPLATE",
    "MODEL_SOURCE",
    "MODEL_ID",
    "HF_TOKEN",
    "HOST",
    "PORT",
    "ALLOW_UNAUTHENTICATED",
    "RATE_LIMIT_RPM",
    "RATE_LIMIT_TPM",
    "RATE_LIMIT_OVERRIDES",
    "METRICS_PUBLIC",
)


class LocalServer:
    """``python -m spaceserve`` on 127.0.0.1 with a fresh random API key; output goes to ``log_path``."""

    def __init__(self, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = "sk-local-" + secrets.token_hex(12)
        self.log_path = log_path
        self.env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
        self.env.update(
            {
                "HOST": "127.0.0.1",
                "PORT": str(self.port),
                "API_KEYS": self.api_key,
                "MODEL_SOURCE": "embedded",
                "HF_HUB_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.env.update(env)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "spaceserve"], cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
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
        assert self.proc is not None
        return self.proc.pid

    def wait_ready(self, timeout: float = 180) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                response = httpx.get(self.url + "/health", timeout=5)
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            if response.status_code == 200:
                return
            if response.json().get("status") == "error":
                raise RuntimeError(f"the model failed to load: {response.text}")
            time.sleep(0.2)
        raise TimeoutError(f"the server was not ready within {timeout:.0f}s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
