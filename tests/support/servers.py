"""Real servers for the end-to-end tests: ``python -m spaceserve`` as a subprocess on a free port."""

from __future__ import annotations

from pathlib import Path

from openai import OpenAI

from spaceserve.deploy import process
from spaceserve.settings import ROOT_DIR as REPO

MODEL_ID = "gemma-3-270m-q4_k_m"
__all__ = ["MODEL_ID", "REPO", "ServerProcess"]


class ServerProcess(process.ServerProcess):
    """``python -m spaceserve`` on loopback (2 threads, offline), its output in a log file for assertions."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__(log_path, env)
        self.start()

    def wait_ready(self, timeout: float = 120, ready_statuses: tuple[int, ...] = (200,)) -> dict[str, object]:
        self.wait_listening()
        return super().wait_ready(timeout, ready_statuses)

    def client(self, api_key: str = "unused", **kwargs: object) -> OpenAI:
        return OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, **kwargs)  # type: ignore[arg-type]
