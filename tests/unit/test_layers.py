"""The package's layers, checked from the source: lower layers never import higher ones.

settings <- base <- engine <- model;  base <- proxy;  main picks model or proxy;  deploy is tooling
that no server module imports. Imports are read with ``ast`` (relative ones resolved), so a lazy
import inside a function counts too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from spaceserve.deploy.stage import stage
from spaceserve.deploy.templates import load_template
from spaceserve.settings import ROOT_DIR

PACKAGE = ROOT_DIR / "spaceserve"


def imports_of(path: Path) -> set[str]:
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def layer_imports(folder: str) -> dict[str, set[str]]:
    return {str(path.relative_to(PACKAGE)): imports_of(path) for path in sorted((PACKAGE / folder).rglob("*.py"))}


def offenders(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{source} imports {name}"
        for source, names in layer_imports(folder).items()
        for name in sorted(names)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


def test_the_import_reader_resolves_relative_imports() -> None:
    names = imports_of(PACKAGE / "model" / "app.py")
    assert "spaceserve.base.app" in names
    assert "spaceserve.engine.engine" in names  # the lazy import inside create_app


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("base", ("spaceserve.model", "spaceserve.proxy", "spaceserve.engine", "spaceserve.deploy", "llama_cpp")),
        ("engine", ("spaceserve.model", "spaceserve.proxy", "spaceserve.deploy")),
        ("proxy", ("spaceserve.model", "spaceserve.engine", "spaceserve.deploy", "llama_cpp")),
        ("model", ("spaceserve.proxy", "spaceserve.deploy")),
        ("web", ("spaceserve.model", "spaceserve.proxy", "spaceserve.engine", "spaceserve.deploy")),
    ],
)
def test_no_import_from_a_higher_layer(folder: str, forbidden: tuple[str, ...]) -> None:
    assert offenders(folder, forbidden) == []


def test_importing_the_proxy_app_loads_no_model_server_code() -> None:
    code = (
        "import sys, spaceserve.proxy.app, spaceserve.main\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('llama_cpp', 'spaceserve.model', 'spaceserve.engine')))\n"
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent
    )
    assert result.stdout.strip() == ""


def test_a_staged_space_has_no_deploy_tooling(tmp_path: Path) -> None:
    staged = stage(load_template("proxy"), tmp_path / "stage")
    assert "spaceserve/base/app.py" in staged.files
    assert not [f for f in staged.files if f.startswith("spaceserve/deploy/")]
