"""Just enough of a Dockerfile reader to know what an image runs: its stages, ENV, CMD, COPY.

There is no Docker engine on the development machines, so the container check and the staging
tests read the real Dockerfile with this instead of building it. It follows the build the way
BuildKit does: global ARGs, ``FROM <stage>`` chains, ``${VAR}`` substitution in ENV and FROM.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

_VAR = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)

_HEALTHCHECK = re.compile(r"^(?:--\S+\s+)*(?:CMD\s+(?P<cmd>.+)|NONE)$", re.DOTALL)


class DockerfileError(Exception):
    pass


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass(frozen=True)
class Copy:
    sources: tuple[str, ...]
    dest: str
    from_stage: str | None
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Image:
    """What the final image is, with every variable resolved."""

    stages: list[str]
    env: dict[str, str]
    cmd: list[str]
    workdir: str
    user: str | None
    expose: list[int]
    healthcheck: list[str] | None
    copies: list[Copy]
    runs: list[str]

    def requirement_files(self) -> list[str]:
        """``-r`` files of every ``pip install`` in the image's stages, in build order."""
        files: list[str] = []
        for run in self.runs:
            if "pip install" in run:
                files.extend(re.findall(r"(?:^|\s)-r\s+(\S+)", run))
        return files

    def app_commands(self) -> list[list[str]]:
        """Build steps that run this project's own code (``python -m spaceserve.<module>``)."""
        commands = []
        for run in self.runs:
            match = re.search(r"python -m (spaceserve(?:\.\w+)*)", run)
            if match:
                commands.append(["python", "-m", match.group(1)])
        return commands


def parse_instructions(text: str) -> list[Instruction]:
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped by Docker too
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        joined = " ".join(part.strip() for part in pending if part.strip())
        pending = []
        keyword, _, args = joined.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    if pending:
        raise DockerfileError(f"line {start}: instruction continues past the end of the file")
    return instructions


def substitute(value: str, scope: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        found = scope.get(name)
        if found is None or (found == "" and match.group("default") is not None):
            return match.group("default") or ""
        return found

    return _VAR.sub(replace, value)


def _exec_form(args: str, line: int) -> list[str]:
    if args.startswith("["):
        try:
            value = json.loads(args)
        except json.JSONDecodeError as exc:
            raise DockerfileError(f"line {line}: not a JSON array: {args}") from exc
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise DockerfileError(f"line {line}: expected a JSON array of strings")
        return value
    return ["/bin/sh", "-c", args]


def _split_flags(args: str) -> tuple[dict[str, str], list[str]]:
    flags: dict[str, str] = {}
    words = shlex.split(args)
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags[name] = value
    return flags, words


class Dockerfile:
    def __init__(self, text: str) -> None:
        self.global_args: dict[str, str | None] = {}
        self.stages: list[Stage] = []
        for instruction in parse_instructions(text):
            if instruction.keyword == "FROM":
                words = instruction.args.split()
                flags = [word for word in words if word.startswith("--")]
                words = [word for word in words if not word.startswith("--")]
                name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
                if not words or (len(words) != 1 and name is None) or flags:
                    raise DockerfileError(f"line {instruction.line}: unsupported FROM {instruction.args}")
                self.stages.append(Stage(words[0], name))
            elif not self.stages:
                if instruction.keyword != "ARG":
                    raise DockerfileError(f"line {instruction.line}: only ARG may come before the first FROM")
                name, sep, default = instruction.args.partition("=")
                self.global_args[name.strip()] = default.strip().strip("\"'") if sep else None
            else:
                self.stages[-1].instructions.append(instruction)
        if not self.stages:
            raise DockerfileError("no FROM instruction")

    def arg_default(self, name: str) -> str | None:
        return self.global_args.get(name)

    def image(self, build_args: dict[str, str] | None = None, target: str | None = None) -> Image:
        """Resolve the image that ``docker build [--build-arg ...] [--target ...]`` would make."""
        build_args = build_args or {}
        global_scope = {k: v for k, v in self.global_args.items() if v is not None}
        global_scope.update({k: v for k, v in build_args.items() if k in self.global_args})
        chain = self._chain(target, global_scope)
        image = Image([], {}, [], "/", None, [], None, [], [])
        for stage in chain:
            image.stages.append(stage.name or stage.base)
            args: dict[str, str] = {}
            for instruction in stage.instructions:
                scope = {**args, **image.env}
                keyword, text = instruction.keyword, instruction.args
                if keyword == "ARG":
                    name, sep, default = text.partition("=")
                    name = name.strip()
                    value = build_args.get(name, default.strip().strip("\"'") if sep else global_scope.get(name))
                    if value is not None:
                        args[name] = substitute(value, scope)
                elif keyword == "ENV":
                    for word in shlex.split(text):
                        key, sep, value = word.partition("=")
                        if not sep:
                            raise DockerfileError(f"line {instruction.line}: use ENV KEY=value")
                        image.env[key] = substitute(value, scope)
                        scope[key] = image.env[key]
                elif keyword == "WORKDIR":
                    path = substitute(text, scope)
                    image.workdir = path if path.startswith("/") else f"{image.workdir.rstrip('/')}/{path}"
                elif keyword == "USER":
                    image.user = substitute(text, scope)
                elif keyword == "EXPOSE":
                    image.expose.extend(int(port.split("/")[0]) for port in substitute(text, scope).split())
                elif keyword == "CMD":
                    image.cmd = _exec_form(text, instruction.line)
                elif keyword == "HEALTHCHECK":
                    check = _HEALTHCHECK.match(text)
                    if check is None:
                        raise DockerfileError(f"line {instruction.line}: HEALTHCHECK [options] CMD ... | NONE")
                    command = check.group("cmd")
                    image.healthcheck = _exec_form(command, instruction.line) if command else None
                elif keyword in ("COPY", "ADD"):
                    flags, words = _split_flags(substitute(text, scope))
                    if len(words) < 2:
                        raise DockerfileError(f"line {instruction.line}: {keyword} needs a source and a destination")
                    image.copies.append(Copy(tuple(words[:-1]), words[-1], flags.get("from"), instruction.line))
                elif keyword == "RUN":
                    image.runs.append(substitute(text, scope))
        return image

    def _chain(self, target: str | None, scope: dict[str, str]) -> list[Stage]:
        by_name = {stage.name: stage for stage in self.stages if stage.name}
        if target is not None and target not in by_name:
            raise DockerfileError(f"no stage named {target!r}")
        stage = by_name[target] if target else self.stages[-1]
        chain = [stage]
        while True:
            base = substitute(stage.base, scope)
            if base not in by_name:
                break
            stage = by_name[base]
            if stage in chain:
                raise DockerfileError(f"stage {base!r} builds on itself")
            chain.append(stage)
        chain.reverse()
        return chain
