"""``python -m spaceserve.publish <template> --space owner/name``: one command from a template to a
running, smoke-tested Space.

1. stage the template as the Space will see it (``--dry-run`` prints the plan and stops here);
2. check the Hub token (``HF_TOKEN`` or the ``hf auth login`` token) and that it may write;
3. create the Space if missing (Docker SDK), a no-op when it exists;
4. set the API key as a Space *secret* (generated and printed once when not given), upstream keys
   of a proxy template as secrets, ``--set`` settings as Space variables;
5. upload the stage, deleting files the template no longer has;
6. request hardware when asked; wait for the runtime to reach RUNNING, reporting each stage,
   stopping with the build-log pointer on BUILD_ERROR / RUNTIME_ERROR / CONFIG_ERROR;
7. smoke-test the live URL: ``/health``, then one short chat completion with the key.

Deliberate deviation from the issue's order: secrets and variables are set before the upload,
not after. The Hub restarts a Space whenever a secret or variable changes, so setting them after
the upload would throw away the first build (and run it once without a key).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from ..settings import ROOT_DIR, SECRET_SETTINGS, SPACES_DIR
from .process import SmokeFailed, smoke_call
from .stage import StagedSpace, StageError, stage
from .templates import SpaceTemplate, TemplateError, load_template, parse_assignments

API_KEY_SECRET = "API_KEYS"  # noqa: S105 - the secret's name, not its value
SPACE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
SETTING_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
# A --set whose name looks like one of these would publish a secret as a public variable.
SECRET_NAME = re.compile(r"(KEY|KEYS|TOKEN|SECRET|PASSWORD)$")
READY_STAGES = {"RUNNING"}
FAILED_STAGES = {"BUILD_ERROR", "RUNTIME_ERROR", "CONFIG_ERROR", "NO_APP_FILE", "DELETING", "STOPPED", "PAUSED"}
# Without a commit sha in the runtime, RUNNING right after an upload may still be the previous
# build; after this long without a building stage it is taken as the new one.
STALE_RUNNING_GRACE = 60.0


class PublishError(Exception):
    """Publishing stopped; the message says what failed and what to do."""


@dataclass
class Options:
    template: str
    space: str
    private: bool = False
    hardware: str | None = None
    dry_run: bool = False
    api_key: str | None = None
    keep_api_key: bool = False
    variables: dict[str, str] = field(default_factory=dict)
    secret_sources: dict[str, str] = field(default_factory=dict)  # secret name -> local env var
    wait: bool = True
    smoke: bool = True
    timeout: float = 3600.0
    poll_interval: float = 10.0
    endpoint: str | None = None
    space_url: str | None = None
    stage_dir: Path | None = None
    templates_dir: Path = SPACES_DIR


@dataclass
class Plan:
    staged: StagedSpace
    secrets: dict[str, str]  # name -> value; only names are ever printed
    generated_key: bool
    missing_secrets: list[str]


class Publisher:
    def __init__(self, options: Options, out: TextIO = sys.stdout, environ: dict[str, str] | None = None) -> None:
        self.options = options
        self.out = out
        self.environ = dict(os.environ) if environ is None else environ
        self.hub_token: str | None = None
        self.space_private = options.private

    def say(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    # -- 1. stage and plan ----------------------------------------------------------------------

    def plan(self) -> Plan:
        options = self.options
        if not SPACE_ID.match(options.space):
            raise PublishError(f"--space {options.space!r}: use <owner>/<name>")
        template = load_template(options.template, options.templates_dir)
        self._check_variables(template)
        stage_dir = options.stage_dir or ROOT_DIR / ".stage" / template.name
        staged = stage(template, stage_dir)
        values, generated, missing = self._secrets(template)
        return Plan(staged, values, generated, missing)

    def _check_variables(self, template: SpaceTemplate) -> None:
        upstream_keys = set(template.upstream_key_names())
        for name in self.options.variables:
            if not SETTING_NAME.match(name):
                raise PublishError(f"--set {name}=...: setting names are upper-case letters, digits and '_'")
            if name in SECRET_SETTINGS or name in upstream_keys or SECRET_NAME.search(name):
                raise PublishError(f"--set {name}: that is a secret; pass it with --secret {name}=LOCAL_ENV_VAR")

    def _secrets(self, template: SpaceTemplate) -> tuple[dict[str, str], bool, list[str]]:
        options = self.options
        values: dict[str, str] = {}
        generated = False
        if not options.keep_api_key:
            if options.api_key:
                values[API_KEY_SECRET] = options.api_key
            elif self.environ.get(options.secret_sources.get(API_KEY_SECRET, "")):
                values[API_KEY_SECRET] = self.environ[options.secret_sources[API_KEY_SECRET]]
            else:
                values[API_KEY_SECRET] = secrets.token_urlsafe(32)
                generated = True
        missing: list[str] = []
        wanted = [*template.upstream_key_names(), *[n for n in options.secret_sources if n != API_KEY_SECRET]]
        for name in dict.fromkeys(wanted):
            source = options.secret_sources.get(name, name)
            value = self.environ.get(source)
            if value:
                values[name] = value
            else:
                missing.append(f"{name} (from ${source})")
        return values, generated, missing

    def print_plan(self, plan: Plan) -> None:
        options, staged = self.options, plan.staged
        self.say(f"template: {staged.template.name} (engine: {staged.template.engine})")
        self.say(f"space: {options.space} ({'private' if options.private else 'public'}, sdk docker)")
        if options.hardware:
            self.say(f"hardware: {options.hardware}")
        key_note = "generated" if plan.generated_key else "given"
        for name in plan.secrets:
            self.say(f"secret: {name}" + (f" ({key_note})" if name == API_KEY_SECRET else ""))
        if options.keep_api_key:
            self.say(f"secret: {API_KEY_SECRET} left as it is on the Space")
        for name in plan.missing_secrets:
            self.say(f"warning: secret {name} is not set locally; set it in the Space settings")
        for name, value in options.variables.items():
            self.say(f"variable: {name}={value}")
        self.say(f"staged in {staged.path}: {len(staged.files)} files")
        for name in staged.files:
            self.say(f"  {name}")

    # -- 2..7 -------------------------------------------------------------------------------------

    def run(self) -> int:
        plan = self.plan()
        self.print_plan(plan)
        if self.options.dry_run:
            self.say("dry run: nothing was sent to the Hub")
            return 0
        api = self.connect()
        self.create(api)
        self.configure(api, plan)
        changed = self.upload(api, plan)
        if self.options.hardware:
            self._hub("requesting hardware", api.request_space_hardware, self.options.space, self.options.hardware)
            self.say(f"hardware: requested {self.options.hardware}")
        if not self.options.wait:
            self.say(f"not waiting: follow the build at {self.space_page(api)}")
            return 0
        # A changed secret or variable restarts the Space even when no file changed.
        restarts = bool(plan.secrets or self.options.variables)
        runtime = self.wait(api, changed, restarts=restarts)
        if self.options.smoke:
            key = plan.secrets.get(API_KEY_SECRET) or self.options.api_key
            self.smoke(self.live_url(runtime), key)
        self.say(f"done: {self.space_page(api)}")
        return 0

    def connect(self) -> Any:
        from huggingface_hub import HfApi, get_token
        from huggingface_hub.errors import HfHubHTTPError

        if self.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise PublishError("HF_HUB_OFFLINE is set: unset it to publish")
        token = self.environ.get("HF_TOKEN") or get_token()
        if not token:
            raise PublishError(
                "no Hugging Face token: set HF_TOKEN to a token with write access, or run `hf auth login`"
            )
        self.hub_token = token
        api = HfApi(endpoint=self.options.endpoint, token=token)
        try:
            me = api.whoami()
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status == 401:
                raise PublishError(
                    "the Hugging Face token was rejected (HTTP 401): check HF_TOKEN or run `hf auth login` again"
                ) from exc
            raise PublishError(f"checking the token failed: {exc}") from exc
        access = (me.get("auth") or {}).get("accessToken") or {}
        if access.get("role") == "read":
            raise PublishError(
                f"the token {access.get('displayName', '')!r} is read-only: create one with write access at "
                "https://huggingface.co/settings/tokens and put it in HF_TOKEN"
            )
        self.say(f"hub: signed in as {me.get('name', '?')} at {api.endpoint}")
        return api

    def _hub(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        from huggingface_hub.errors import HfHubHTTPError

        try:
            return call(*args, **kwargs)
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            hint = ""
            if status in (401, 403):
                hint = " (the token may lack write access to this namespace)"
            elif status == 402:
                hint = " (this hardware or SDK needs a paid plan on this account)"
            raise PublishError(f"{what} failed: {exc}{hint}") from exc

    def create(self, api: Any) -> None:
        url = self._hub(
            "creating the Space",
            api.create_repo,
            self.options.space,
            repo_type="space",
            space_sdk="docker",
            private=self.options.private,
            exist_ok=True,
        )
        self.say(f"space: {url}")

    def configure(self, api: Any, plan: Plan) -> None:
        space = self.options.space
        for name, value in plan.secrets.items():
            self._hub(f"setting the secret {name}", api.add_space_secret, space, name, value)
            self.say(f"secret: {name} set")
        if plan.generated_key:
            # The only place the generated key ever appears; it is never logged.
            self.say(
                f"API key (shown once; stored as the Space secret {API_KEY_SECRET}): {plan.secrets[API_KEY_SECRET]}"
            )
        for name, value in self.options.variables.items():
            self._hub(f"setting the variable {name}", api.add_space_variable, space, name, value)
            self.say(f"variable: {name} set")

    def upload(self, api: Any, plan: Plan) -> str | None:
        """Upload the stage; the new commit's id, or None when nothing changed."""
        head_before = self._head(api)
        info = self._hub(
            "uploading",
            api.upload_folder,
            repo_id=self.options.space,
            repo_type="space",
            folder_path=plan.staged.path,
            # Everything not in the stage goes: files a template dropped must not linger in the Space.
            delete_patterns="*",
            commit_message=f"Publish template {plan.staged.template.name} with spaceserve",
        )
        oid = getattr(info, "oid", None)
        if oid and oid == head_before:
            self.say("upload: no file changed")
            return None
        self.say(f"upload: {len(plan.staged.files)} files, commit {str(oid)[:12]}")
        return str(oid) if oid else None

    def _head(self, api: Any) -> str | None:
        from huggingface_hub.errors import HfHubHTTPError

        try:
            info = api.space_info(self.options.space)
        except HfHubHTTPError:
            return None
        self.space_private = bool(getattr(info, "private", False))
        return str(info.sha) if getattr(info, "sha", None) else None

    def wait(self, api: Any, commit: str | None, *, restarts: bool = False) -> Any:
        options = self.options
        deadline = time.monotonic() + options.timeout
        started = time.monotonic()
        last_stage = None
        seen_building = commit is None and not restarts
        while True:
            runtime = self._hub("reading the Space runtime", api.get_space_runtime, options.space)
            stage_name = str(runtime.stage)
            if stage_name != last_stage:
                self.say(f"runtime: {stage_name}" + (f" (hardware {runtime.hardware})" if runtime.hardware else ""))
                last_stage = stage_name
            if stage_name not in READY_STAGES and stage_name not in FAILED_STAGES:
                seen_building = True
            sha = (runtime.raw or {}).get("sha")
            if stage_name in READY_STAGES:
                fresh = sha == commit if (sha and commit) else seen_building
                if fresh or time.monotonic() - started > STALE_RUNNING_GRACE:
                    return runtime
            elif stage_name in FAILED_STAGES and (seen_building or sha == commit or commit is None):
                message = (runtime.raw or {}).get("errorMessage")
                logs = "build" if "BUILD" in stage_name else "container"
                raise PublishError(
                    f"the Space stopped at {stage_name}"
                    + (f": {message}" if message else "")
                    + f"; see the logs at {self.space_page(api)}?logs={logs}"
                )
            if time.monotonic() > deadline:
                raise PublishError(
                    f"the Space is still {stage_name} after {options.timeout:.0f}s; follow it at {self.space_page(api)}"
                )
            time.sleep(options.poll_interval)

    def space_page(self, api: Any) -> str:
        return f"{api.endpoint}/spaces/{self.options.space}"

    def live_url(self, runtime: Any) -> str:
        if self.options.space_url:
            return self.options.space_url.rstrip("/")
        for entry in (runtime.raw or {}).get("domains") or []:
            if entry.get("domain"):
                return f"https://{entry['domain']}"
        return f"https://{re.sub(r'[^a-z0-9]+', '-', self.options.space.lower()).strip('-')}.hf.space"

    def smoke(self, url: str, key: str | None) -> None:
        options = self.options
        deadline = time.monotonic() + options.timeout
        last = None
        # A private Space's URL needs the Hub token as the Bearer; the app's key then goes in X-API-Key.
        hub_auth = {"Authorization": f"Bearer {self.hub_token}"} if self.space_private and self.hub_token else {}
        with httpx.Client(base_url=url, timeout=120, headers=hub_auth) as client:
            while True:
                try:
                    response = client.get("/health")
                    status = response.json().get("status") if response.content else None
                    state = f"{response.status_code} {status or ''}".strip()
                except (httpx.HTTPError, ValueError) as exc:
                    response, state = None, f"no answer ({exc.__class__.__name__})"
                if state != last:
                    self.say(f"smoke: {url}/health -> {state}")
                    last = state
                if response is not None and response.status_code == 200:
                    break
                if response is not None and status == "error":
                    raise PublishError(f"the Space is up but reports an error: {response.text}")
                if time.monotonic() > deadline:
                    raise PublishError(f"{url}/health did not answer 200 within {options.timeout:.0f}s")
                time.sleep(options.poll_interval)
            if not key:
                self.say("smoke: no API key known here (--keep-api-key without --api-key); chat completion skipped")
                return
            headers = {"X-API-Key": key} if hub_auth else {"Authorization": f"Bearer {key}"}
            started = time.monotonic()
            try:
                model, tokens = smoke_call(client, headers)
            except SmokeFailed as exc:
                raise PublishError(f"smoke: {exc}") from exc
            self.say(f"smoke: chat completion with {model} ok ({tokens} tokens in {time.monotonic() - started:.1f}s)")


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m spaceserve.publish", description="Stage a template and publish it to a Hugging Face Space."
    )
    parser.add_argument("template", help="a folder under spaces/ (primary, fallback, proxy, or your own)")
    parser.add_argument("--space", required=True, help="the Space to create or update: <owner>/<name>")
    parser.add_argument("--private", action="store_true", help="create the Space private (ignored if it exists)")
    parser.add_argument("--hardware", help="request this hardware, e.g. cpu-basic or cpu-upgrade")
    parser.add_argument("--dry-run", action="store_true", help="stage and print the plan; send nothing")
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--api-key", help="the key clients will use (default: generate one and print it once)")
    keys.add_argument("--api-key-env", metavar="VAR", help="read the API key from this environment variable")
    parser.add_argument(
        "--keep-api-key", action="store_true", help="leave the Space's API_KEYS secret as it is (re-publish)"
    )
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a Space variable")
    parser.add_argument(
        "--secret", action="append", default=[], metavar="NAME=ENVVAR", help="a Space secret read from $ENVVAR"
    )
    parser.add_argument("--no-wait", action="store_true", help="stop after the upload")
    parser.add_argument("--no-smoke", action="store_true", help="wait for RUNNING but do not call the Space")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for build and start")
    parser.add_argument("--poll-interval", type=float, default=10.0, help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help="the Hub's URL (default: HF_ENDPOINT or https://huggingface.co)")
    parser.add_argument("--space-url", help="the Space's own URL for the smoke test (default: from the runtime)")
    parser.add_argument("--stage-dir", type=Path, help="where to stage (default: .stage/<template>)")
    parser.add_argument(
        "--templates-dir", type=Path, default=SPACES_DIR, help="where templates live (default: spaces/)"
    )
    args = parser.parse_args(argv)
    api_key = args.api_key
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise PublishError(f"--api-key-env {args.api_key_env}: that variable is not set")
    try:
        variables = parse_assignments(args.set, "--set")
        secret_sources = parse_assignments(args.secret, "--secret")
    except ValueError as exc:
        raise PublishError(str(exc)) from None
    return Options(
        template=args.template,
        space=args.space,
        private=args.private,
        hardware=args.hardware,
        dry_run=args.dry_run,
        api_key=api_key,
        keep_api_key=args.keep_api_key,
        variables=variables,
        secret_sources=secret_sources,
        wait=not args.no_wait,
        smoke=not args.no_smoke,
        timeout=args.timeout,
        poll_interval=args.poll_interval,
        endpoint=args.endpoint,
        space_url=args.space_url,
        stage_dir=args.stage_dir,
        templates_dir=args.templates_dir,
    )


def main(argv: list[str] | None = None) -> int:
    try:
        options = parse_args(argv)
        return Publisher(options).run()
    except (PublishError, TemplateError, StageError) as exc:
        sys.stderr.write(f"publish: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
