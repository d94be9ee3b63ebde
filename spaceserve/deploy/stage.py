"""Stage a template into a folder exactly as its Space will see it.

The stage holds the top-level Dockerfile (its TEMPLATE and ENGINE defaults set for the
template), ``app.py``, the runtime requirement files, the ``spaceserve`` package without its
``deploy`` tooling, the template's
README as the Space's ``README.md`` and the template folder itself under ``spaces/<name>/``
(where :func:`spaceserve.settings.load_settings` finds its ``settings.env``). Nothing else: no
tests, caches, other templates, dev requirements or secrets.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..settings import ROOT_DIR
from .templates import SpaceTemplate, TemplateError

PACKAGE = "spaceserve"
TOOLING = ("deploy",)  # package folders that stay out of every Space
TOP_FILES = ("Dockerfile", "app.py", "requirements.txt", "requirements-base.txt")
# Never staged from the package or a template folder: caches, editor and OS debris, and files
# that by their name hold secrets.
IGNORED = (
    "__pycache__",
    "*.pyc",
    "*.pyo",
    ".*",
    "*~",
    "*.swp",
    "*.key",
    "*.pem",
    "*.local",
    "*secret*",
    "*.log",
)


class StageError(Exception):
    pass


@dataclass(frozen=True)
class StagedSpace:
    template: SpaceTemplate
    path: Path
    files: list[str]  # relative POSIX paths, sorted


def set_build_defaults(dockerfile: str, values: dict[str, str]) -> str:
    """Set the defaults of the Dockerfile's global ``ARG name=...`` lines (before the first FROM)."""
    head, sep, tail = dockerfile.partition("\nFROM ")
    for name, value in values.items():
        head, count = re.subn(rf"(?m)^ARG {name}=.*$", f"ARG {name}={value}", head)
        if count != 1:
            raise StageError(f"Dockerfile: expected one global `ARG {name}=...` line before the first FROM")
    return head + sep + tail


def stage(template: SpaceTemplate, dest: Path, *, root: Path = ROOT_DIR) -> StagedSpace:
    """Write the Space for ``template`` into ``dest`` (replacing an earlier stage there)."""
    try:
        template.check()
    except TemplateError as exc:
        raise StageError(str(exc)) from exc
    _clear(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in TOP_FILES:
        source = root / name
        if not source.is_file():
            raise StageError(f"{source} is missing; the Space needs it")
        shutil.copy2(source, dest / name)
    dockerfile = dest / "Dockerfile"
    dockerfile.write_text(
        set_build_defaults(
            dockerfile.read_text(encoding="utf-8"), {"TEMPLATE": template.name, "ENGINE": template.engine}
        ),
        encoding="utf-8",
    )
    ignore = shutil.ignore_patterns(*IGNORED)
    package = root / PACKAGE

    def ignore_in_package(folder: str, names: list[str]) -> set[str]:
        # The deployment tooling (this module among them) runs on a developer's machine, never in a Space.
        skipped = set(ignore(folder, names))
        if Path(folder) == package:
            skipped.update(name for name in names if name in TOOLING)
        return skipped

    shutil.copytree(package, dest / PACKAGE, ignore=ignore_in_package)
    shutil.copytree(
        template.folder, dest / "spaces" / template.name, ignore=shutil.ignore_patterns(*IGNORED, "README.md")
    )
    shutil.copy2(template.readme, dest / "README.md")
    files = sorted(path.relative_to(dest).as_posix() for path in dest.rglob("*") if path.is_file())
    return StagedSpace(template, dest, files)


def _clear(dest: Path) -> None:
    if not dest.exists():
        return
    if not dest.is_dir():
        raise StageError(f"{dest} exists and is not a folder")
    entries = list(dest.iterdir())
    # Only ever delete something that is recognisably an earlier stage.
    if entries and not ((dest / "Dockerfile").is_file() and (dest / "app.py").is_file()):
        raise StageError(f"{dest} is not empty and is not an earlier stage; choose another --stage-dir")
    shutil.rmtree(dest)
