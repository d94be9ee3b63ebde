"""``make fuzz``: schemathesis against the real server's own OpenAPI schema (embedded model, loopback).

    python -m loadtests.fuzz                 # 60 examples per operation, all phases but stateful
    python -m loadtests.fuzz -n 20 --phases fuzzing

Fails on any 5xx, any 4xx/5xx body that is not an OpenAI error object (loadtests/fuzz_hooks.py),
or a crash of the server. Reports go to artifacts/fuzz/.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from spaceserve.settings import ROOT_DIR as REPO

from .serve import LocalServer

MODEL_ID = "gemma-3-270m-q4_k_m"  # the embedded model's id
SERVER_ENV = {"PARALLEL_SLOTS": "2", "CONTEXT_SIZE": "1024"}


def run_schemathesis(
    url: str,
    api_key: str,
    *,
    model: str,
    max_examples: int,
    phases: str,
    report_dir: Path,
    seed: int | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the schemathesis CLI against ``url``; its output is in the result's stdout."""
    report_dir.mkdir(parents=True, exist_ok=True)
    command = [
        str(Path(sys.executable).parent / "schemathesis"), "run", f"{url}/openapi.json",
        "-H", f"Authorization: Bearer {api_key}",
        "--checks", "not_a_server_error,openai_error_body",
        "--max-examples", str(max_examples), "--phases", phases,
        "--request-timeout", "120", "--workers", "1", "--no-color",
        "--report", "junit", "--report-dir", str(report_dir),
    ]  # fmt: skip
    if seed is not None:
        command += ["--seed", str(seed)]
    env = {
        **(extra_env or {}),
        "SCHEMATHESIS_HOOKS": "loadtests.fuzz_hooks",
        "FUZZ_MODEL": model,
        "PYTHONPATH": str(REPO),
    }
    return subprocess.run(command, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--max-examples", type=int, default=60)
    parser.add_argument("--phases", default="examples,coverage,fuzzing")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "fuzz")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with LocalServer(args.out / "server.log", **SERVER_ENV) as server:
        result = run_schemathesis(
            server.url,
            server.api_key,
            model=MODEL_ID,
            max_examples=args.max_examples,
            phases=args.phases,
            report_dir=args.out,
            seed=args.seed,
        )
        crashed = server.proc is not None and server.proc.poll() is not None
    print(result.stdout, result.stderr, sep="\n")
    if crashed:
        print(f"the server died during fuzzing; see {args.out / 'server.log'}")
    return 1 if crashed or result.returncode != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
