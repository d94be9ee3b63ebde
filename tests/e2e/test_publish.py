"""``python -m spaceserve.deploy.publish`` end to end against a loopback Hub (tests/support/hubfake.py).

The script runs as a subprocess with HF_ENDPOINT and --endpoint pointing at the fake Hub and an
empty HF_HOME, so no request can reach the real Hub and no stored login is used.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from spaceserve.deploy.process import SCRUBBED

from ..support.hubfake import FakeHub
from ..support.servers import REPO, ServerProcess

SPACE = "tester/coder"


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as fake:
        yield fake


def publish(
    hub: FakeHub, tmp_path: Path, *args: str, token: str | None = "default", extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED and not k.startswith("HF_")}
    env.update(
        {
            "HF_ENDPOINT": hub.url,
            "HF_HOME": str(tmp_path / "hf-home"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "NO_PROXY": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if token is not None:
        env["HF_TOKEN"] = hub.token if token == "default" else token
    env.update(extra_env or {})
    command = [
        sys.executable,
        "-m",
        "spaceserve.deploy.publish",
        *args,
        "--endpoint",
        hub.url,
        "--stage-dir",
        str(tmp_path / "stage"),
        "--poll-interval",
        "0.05",
        "--timeout",
        "60",
    ]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


def test_dry_run_stages_and_prints_the_plan_without_any_request(hub: FakeHub, tmp_path: Path) -> None:
    result = publish(hub, tmp_path, "primary", "--space", SPACE, "--dry-run", "--set", "MAX_QUEUE=8", token=None)
    assert result.returncode == 0, result.stderr
    assert hub.requests == []
    out = result.stdout
    assert "template: primary (engine: llama)" in out
    assert "secret: API_KEYS (generated)" in out and "variable: MAX_QUEUE=8" in out
    for name in ("Dockerfile", "README.md", "app.py", "spaces/primary/settings.env", "spaceserve/model/app.py"):
        assert f"  {name}\n" in out
    assert "spaceserve/deploy/" not in out  # the tooling stays out of the Space
    assert "dry run: nothing was sent" in out
    assert (tmp_path / "stage" / "Dockerfile").read_text().count("ARG TEMPLATE=primary") == 1


def test_publish_end_to_end_with_a_real_model_server(hub: FakeHub, tmp_path: Path, start_server: object) -> None:
    key = "sk-publish-test-key-1234567890"
    live: ServerProcess = start_server(API_KEYS=key, PARALLEL_SLOTS="2", CONTEXT_SIZE="2048")  # type: ignore[operator]
    result = publish(
        hub,
        tmp_path,
        "primary",
        "--space",
        SPACE,
        "--hardware",
        "cpu-basic",
        "--api-key",
        key,
        "--set",
        "MAX_QUEUE=8",
        "--set",
        "LOG_LEVEL=debug",
        "--space-url",
        live.url,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    (create,) = hub.calls("POST", r"^/api/repos/create$")
    assert create.json()["type"] == "space" and create.json()["sdk"] == "docker"
    assert create.json().get("visibility") != "private"
    space = hub.spaces[SPACE]
    # The key is a secret, never a variable; settings given with --set are variables.
    assert space.secrets == {"API_KEYS": key}
    assert space.variables == {"MAX_QUEUE": "8", "LOG_LEVEL": "debug"}
    assert all(r.json()["key"] != "API_KEYS" for r in hub.calls("POST", "/variables$"))
    # Secrets and variables are in place before the upload, so the first build already has them.
    order = [r.path for r in hub.requests if r.method == "POST"]
    assert max(i for i, p in enumerate(order) if p.endswith(("/secrets", "/variables"))) < min(
        i for i, p in enumerate(order) if "/commit/" in p
    )
    assert space.hardware == "cpu-basic"
    staged = sorted(
        p.relative_to(tmp_path / "stage").as_posix() for p in (tmp_path / "stage").rglob("*") if p.is_file()
    )
    assert sorted(space.files) == staged
    assert b"ARG TEMPLATE=primary" in space.files["Dockerfile"]
    assert b"MODEL_SOURCE=hf://TheBloke/deepseek-coder" in space.files["spaces/primary/settings.env"]
    assert not any(name.startswith(("tests/", ".venv")) or "__pycache__" in name for name in space.files)

    out = result.stdout
    for stage in ("BUILDING", "APP_STARTING", "RUNNING"):
        assert f"runtime: {stage}" in out
    assert f"smoke: {live.url}/health -> 200 ok" in out
    assert "smoke: chat completion with gemma-3-270m-q4_k_m ok" in out
    assert key not in out + result.stderr  # a given key is never echoed
    assert '"route":"/v1/chat/completions","status":200' in live.log().replace(" ", "")


def test_generated_key_is_printed_once_and_republish_is_idempotent(hub: FakeHub, tmp_path: Path) -> None:
    first = publish(hub, tmp_path, "fallback", "--space", SPACE, "--private", "--space-url", f"{hub.url}/app")
    assert first.returncode == 0, first.stdout + first.stderr
    (create,) = hub.calls("POST", r"^/api/repos/create$")
    assert create.json() == {
        "name": "coder",
        "organization": "tester",
        "visibility": "private",
        "type": "space",
        "sdk": "docker",
    }
    # A private Space is reached with the Hub token; the app's own key rides in X-API-Key.
    (chat,) = hub.calls("POST", r"^/app/v1/chat/completions$")
    assert chat.headers["authorization"] == f"Bearer {hub.token}" and chat.headers["x-api-key"]
    key = hub.spaces[SPACE].secrets["API_KEYS"]
    assert len(key) >= 40
    assert first.stdout.count(key) == 1 and key not in first.stderr
    assert "smoke: chat completion with fake-model ok" in first.stdout  # the fake Space accepts only that key
    commits = len(hub.spaces[SPACE].commits)

    # A file the template no longer has must disappear from the Space on the next publish.
    hub.spaces[SPACE].files["spaces/fallback/old-notes.txt"] = b"stale"
    hub.clear()
    second = publish(hub, tmp_path, "fallback", "--space", SPACE, "--keep-api-key", "--no-smoke")
    assert second.returncode == 0, second.stdout + second.stderr
    assert hub.calls("POST", r"^/api/repos/create$")  # asked, got 409, carried on
    assert not hub.calls("POST", "/secrets$")  # --keep-api-key leaves the key alone
    (commit,) = hub.calls("POST", "/commit/")
    lines = commit.ndjson()
    assert [line["value"]["path"] for line in lines if line["key"] == "deletedFile"] == [
        "spaces/fallback/old-notes.txt"
    ]
    assert not [line for line in lines if line["key"] == "file"]  # unchanged files are not re-sent
    assert "spaces/fallback/old-notes.txt" not in hub.spaces[SPACE].files
    assert hub.spaces[SPACE].secrets["API_KEYS"] == key

    hub.clear()
    third = publish(hub, tmp_path, "fallback", "--space", SPACE, "--keep-api-key", "--no-smoke")
    assert third.returncode == 0, third.stdout + third.stderr
    assert not hub.calls("POST", "/commit/") and "upload: no file changed" in third.stdout
    assert len(hub.spaces[SPACE].commits) == commits + 1


def test_proxy_upstream_keys_become_secrets(hub: FakeHub, tmp_path: Path) -> None:
    templates = tmp_path / "templates" / "spaces"
    folder = templates / "proxy"
    folder.mkdir(parents=True)
    shutil.copy(REPO / "spaces" / "proxy" / "README.md", folder / "README.md")
    upstreams = [
        {"name": "primary", "base_url": "https://tester-coder.hf.space/v1", "api_key_env": "PRIMARY_SPACE_KEY"},
        {"name": "hosted", "base_url": "https://api.example.com/v1", "api_key_env": "HOSTED_API_KEY"},
        {"name": "router", "base_url": "https://router.example.com/v1", "api_key_env": "ROUTER_KEY"},
    ]
    (folder / "upstreams.json").write_text(json.dumps(upstreams))
    (folder / "settings.env").write_text("UPSTREAMS_FILE=spaces/proxy/upstreams.json\n")
    result = publish(
        hub,
        tmp_path,
        "proxy",
        "--space",
        "tester/edge",
        "--templates-dir",
        str(templates),
        "--secret",
        "HOSTED_API_KEY=MY_HOSTED_KEY",
        "--space-url",
        f"{hub.url}/app",
        extra_env={"PRIMARY_SPACE_KEY": "primary-secret", "MY_HOSTED_KEY": "hosted-secret"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    space = hub.spaces["tester/edge"]
    assert space.secrets["PRIMARY_SPACE_KEY"] == "primary-secret"
    assert space.secrets["HOSTED_API_KEY"] == "hosted-secret"
    assert set(space.secrets) == {"API_KEYS", "PRIMARY_SPACE_KEY", "HOSTED_API_KEY"}
    assert space.variables == {}
    assert "warning: secret ROUTER_KEY (from $ROUTER_KEY) is not set locally" in result.stdout
    assert "primary-secret" not in result.stdout + result.stderr
    assert b"ARG ENGINE=none" in space.files["Dockerfile"]
    assert "spaces/proxy/upstreams.json" in space.files


def test_bad_token_fails_cleanly(hub: FakeHub, tmp_path: Path) -> None:
    result = publish(hub, tmp_path, "primary", "--space", SPACE, token="hf_wrong")
    assert result.returncode == 1
    assert "token was rejected (HTTP 401)" in result.stderr
    assert "Traceback" not in result.stderr
    assert [r.path for r in hub.requests] == ["/api/whoami-v2"]


def test_read_only_token_fails_cleanly(tmp_path: Path) -> None:
    with FakeHub(role="read") as hub:
        result = publish(hub, tmp_path, "primary", "--space", SPACE)
        assert result.returncode == 1
        assert "is read-only" in result.stderr and "write access" in result.stderr
        assert [r.path for r in hub.requests] == ["/api/whoami-v2"]


def test_missing_token_fails_cleanly(hub: FakeHub, tmp_path: Path) -> None:
    result = publish(hub, tmp_path, "primary", "--space", SPACE, token=None)
    assert result.returncode == 1
    assert "no Hugging Face token" in result.stderr and "HF_TOKEN" in result.stderr
    assert hub.requests == []


def test_build_error_stops_with_the_log_pointer(hub: FakeHub, tmp_path: Path) -> None:
    hub.stages = ["BUILDING", "BUILD_ERROR"]
    result = publish(hub, tmp_path, "primary", "--space", SPACE, "--space-url", f"{hub.url}/app")
    assert result.returncode == 1
    assert "runtime: BUILDING" in result.stdout
    assert "stopped at BUILD_ERROR: Build failed with exit code: 1" in result.stderr
    assert f"{hub.url}/spaces/{SPACE}?logs=build" in result.stderr
    assert not [r for r in hub.requests if r.path.startswith("/app/")]  # no smoke test of a failed build


def test_secret_looking_settings_are_refused_as_variables(hub: FakeHub, tmp_path: Path) -> None:
    result = publish(hub, tmp_path, "primary", "--space", SPACE, "--set", "OPENAI_API_KEY=sk-123")
    assert result.returncode == 1
    assert "--secret OPENAI_API_KEY=" in result.stderr
    assert hub.requests == []


def test_unknown_template_names_the_ones_there_are(hub: FakeHub, tmp_path: Path) -> None:
    result = publish(hub, tmp_path, "nosuch", "--space", SPACE, "--dry-run")
    assert result.returncode == 1
    assert "no template 'nosuch'" in result.stderr and "primary" in result.stderr
