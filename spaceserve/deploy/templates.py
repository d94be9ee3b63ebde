"""Space templates: the folders under ``spaces/``, each holding what differs between Spaces.

A template is a folder with the Space's ``README.md`` (front matter) and a ``settings.env``
read by :func:`spaceserve.settings.load_settings`. Any folder counts, so a user makes a new
template (another GGUF) by copying one; nothing here lists the templates by name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dotenv import dotenv_values

from ..proxy.config import read_upstream_list
from ..settings import SECRET_SETTINGS, SPACES_DIR, TEMPLATE_PATTERN, SettingsError, serves_proxy

ImageEngine = Literal["llama", "none"]  # the Dockerfile's ENGINE build argument
TEMPLATE_NAME = re.compile(TEMPLATE_PATTERN)


class TemplateError(Exception):
    """A template is missing or malformed; the message says which file and what to fix."""


@dataclass(frozen=True)
class SpaceTemplate:
    name: str
    folder: Path

    @property
    def readme(self) -> Path:
        return self.folder / "README.md"

    @property
    def settings_file(self) -> Path:
        return self.folder / "settings.env"

    def settings(self) -> dict[str, str]:
        """The template's ``settings.env`` as written (no environment applied)."""
        if not self.settings_file.is_file():
            return {}
        return {key.upper(): value or "" for key, value in dotenv_values(self.settings_file).items()}

    def front_matter(self) -> dict[str, str]:
        """The README's front matter as flat ``key: value`` strings (all a Space README needs)."""
        return parse_front_matter(self.readme.read_text(encoding="utf-8"))

    @property
    def engine(self) -> ImageEngine:
        """``none`` for a proxy template (no model, no llama.cpp in the image), else ``llama``."""
        return "none" if serves_proxy(self.name, self.settings()) else "llama"

    def upstream_key_names(self, repo_root: Path | None = None) -> list[str]:
        """Names of the env variables holding upstream keys (``api_key_env`` in the upstream list).

        The list is read as the proxy reads it, with the repository root standing in for the app
        directory.
        """
        settings = self.settings()
        upstreams, upstreams_file = settings.get("UPSTREAMS"), settings.get("UPSTREAMS_FILE")
        if not upstreams and not upstreams_file:
            return []
        try:
            _, raw = read_upstream_list(
                upstreams, Path(upstreams_file) if upstreams_file else None, repo_root or self.folder.parent.parent
            )
        except SettingsError as exc:
            raise TemplateError(f"{self.settings_file}: {exc}") from None
        names: list[str] = []
        for name in _find_key_envs(raw):
            if name not in names:
                names.append(name)
        return names

    def check(self) -> None:
        """Refuse templates that cannot become a Space: no README, no app_port, secrets in settings."""
        if not TEMPLATE_NAME.match(self.name):
            raise TemplateError(
                f"template name {self.name!r}: use lower-case letters, digits, '-' and '_' (it becomes SPACE_TEMPLATE)"
            )
        if not self.readme.is_file():
            raise TemplateError(f"{self.readme} is missing: every template needs the Space's README with front matter")
        if not self.settings_file.is_file():
            raise TemplateError(
                f"{self.settings_file} is missing: every template needs its settings file (it may hold only comments)"
            )
        front = self.front_matter()
        for key in ("title", "sdk", "app_port"):
            if not front.get(key):
                raise TemplateError(f"{self.readme}: the front matter needs `{key}`")
        if front["sdk"] != "docker":
            raise TemplateError(f"{self.readme}: `sdk: {front['sdk']}`; this image needs `sdk: docker`")
        leaked = sorted((SECRET_SETTINGS | set(self.upstream_key_names())) & set(self.settings()))
        if leaked:
            raise TemplateError(
                f"{self.settings_file} sets {', '.join(leaked)}: keys are Space secrets, never template files "
                "(publish sets them with --api-key / --secret)"
            )


def parse_front_matter(text: str) -> dict[str, str]:
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        raise TemplateError("README.md must start with a '---' front matter block")
    values: dict[str, str] = {}
    for line in lines[1:]:
        if line.strip() == "---":
            return values
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if not sep or line[0].isspace():
            continue  # nested YAML the Hub understands but this image does not need
        values[key.strip()] = value.strip().strip("\"'")
    raise TemplateError("README.md front matter is not closed by a '---' line")


def _find_key_envs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "api_key_env" and isinstance(value, str) and value:
                yield value
            else:
                yield from _find_key_envs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _find_key_envs(item)


def discover(templates_dir: Path = SPACES_DIR) -> dict[str, SpaceTemplate]:
    """Every folder under ``templates_dir`` that holds a README.md, by name."""
    if not templates_dir.is_dir():
        return {}
    return {
        path.name: SpaceTemplate(path.name, path)
        for path in sorted(templates_dir.iterdir())
        if path.is_dir() and (path / "README.md").is_file()
    }


def load_template(name: str, templates_dir: Path = SPACES_DIR) -> SpaceTemplate:
    templates = discover(templates_dir)
    if name not in templates:
        known = ", ".join(templates) or "none"
        raise TemplateError(f"no template {name!r} in {templates_dir} (have: {known})")
    template = templates[name]
    template.check()
    return template


def parse_assignments(values: list[str], flag: str) -> dict[str, str]:
    """``NAME=VALUE`` command-line values (``--set``, ``--secret``) as a dict; ValueError names the bad one."""
    result = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"{flag} {item!r}: use {flag} NAME=VALUE")
        result[name] = value
    return result
