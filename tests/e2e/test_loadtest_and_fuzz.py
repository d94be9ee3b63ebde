"""The load-test runner and the fuzzer, each run for real (short versions) against the real server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import httpx
import pytest

from loadtests.fuzz import run_schemathesis

from ..support.servers import MODEL_ID, REPO, ServerProcess

FUZZ_KEY = "sk-test-fuzz-2a61"
GEMMA3_VOCABULARY = 262144


def run_loadtest(tmp_path: Path, *args: str, timeout: float) -> tuple[subprocess.CompletedProcess[str], dict]:  # type: ignore[type-arg]
    result = subprocess.run(
        [sys.executable, "-m", "loadtests.run", "--out", str(tmp_path), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    summary_path = tmp_path / "default" / "summary.json"
    assert summary_path.exists(), result.stdout + result.stderr
    return result, json.loads(summary_path.read_text())


def test_short_headless_locust_run_has_no_failures_and_a_summary(tmp_path: Path) -> None:
    result, summary = run_loadtest(
        tmp_path, "-u", "2", "-r", "2", "-t", "10s", "--max-tokens", "8",
        "StreamingChatUser", "NonStreamingChatUser", timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary["failures"] == 0 and summary["requests"] >= 2
    assert summary["rate_limited_429"] == 0
    assert summary["generated_tokens"] > 0 and summary["tokens_per_second"] > 0
    kinds = {(row["type"], row["name"]) for row in summary["rows"]}
    assert ("POST", "chat stream") in kinds and ("TTFT", "chat stream") in kinds
    assert ("TOKENS/S", "chat stream") in kinds and ("POST", "chat") in kinds
    assert summary["memory"]["samples"] >= 2
    for line in ("p50", "aggregate generated tokens/s", "429s: 0", "server RSS", "OK"):
        assert line in result.stdout
    for name in ("locust_stats.csv", "locust_failures.csv", "locust_final_stats.csv", "server.log"):
        assert (tmp_path / "default" / name).exists()


@pytest.mark.slow
def test_site_generator_mix_runs_without_failures(tmp_path: Path) -> None:
    result, summary = run_loadtest(tmp_path, "-u", "3", "-r", "3", "-t", "60s", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("POST", "site generator") in {(row["type"], row["name"]) for row in summary["rows"]}


@pytest.fixture(scope="module")
def fuzz_target(start_server: object, model_path: Path) -> ServerProcess:
    return start_server(  # type: ignore[operator, no-any-return]
        MODEL_SOURCE=str(model_path), API_KEYS=FUZZ_KEY, PARALLEL_SLOTS="2", CONTEXT_SIZE="1024"
    )


def test_short_fuzz_finds_no_server_error_or_non_openai_error(fuzz_target: ServerProcess, tmp_path: Path) -> None:
    result = run_schemathesis(
        fuzz_target.url,
        FUZZ_KEY,
        model=MODEL_ID,
        max_examples=8,
        phases="fuzzing",
        report_dir=tmp_path,
        seed=20261122,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    reports = list(tmp_path.glob("junit*.xml"))
    assert reports, result.stdout
    tested = {case.get("name") for case in ElementTree.parse(reports[0]).getroot().iter("testcase")}
    assert {"POST /v1/chat/completions", "POST /v1/completions"} <= tested, tested
    assert fuzz_target.proc.poll() is None, "the server died while being fuzzed"
    assert httpx.get(fuzz_target.url + "/health").status_code == 200


def test_token_ids_beyond_the_vocabulary_are_a_400(fuzz_target: ServerProcess) -> None:
    response = httpx.post(
        fuzz_target.url + "/v1/completions",
        json={"model": MODEL_ID, "prompt": [2, GEMMA3_VOCABULARY + 5], "max_tokens": 2},
        headers={"Authorization": f"Bearer {FUZZ_KEY}"},
        timeout=60,
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt"


def test_negative_and_huge_token_ids_are_a_400(fuzz_target: ServerProcess) -> None:
    for prompt in ([-1, 5], [2, 2**40]):
        response = httpx.post(
            fuzz_target.url + "/v1/completions",
            json={"model": MODEL_ID, "prompt": prompt, "max_tokens": 2},
            headers={"Authorization": f"Bearer {FUZZ_KEY}"},
            timeout=60,
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "prompt"
