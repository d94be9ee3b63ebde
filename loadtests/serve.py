"""A spaceserve server on the embedded model, on a free loopback port, for load tests and fuzzing."""

from __future__ import annotations

import secrets
from pathlib import Path

from spaceserve.deploy.process import ServerProcess


class LocalServer(ServerProcess):
    """``python -m spaceserve`` on 127.0.0.1 with a fresh random API key; output goes to ``log_path``.

    Used as a context manager: entering starts it and waits for /health; leaving stops it.
    """

    def __init__(self, log_path: Path, **env: str) -> None:
        self.api_key = "sk-local-" + secrets.token_hex(12)
        super().__init__(log_path, {"API_KEYS": self.api_key, "MODEL_SOURCE": "embedded", **env})
