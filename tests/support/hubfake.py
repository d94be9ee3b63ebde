"""A loopback stand-in for the Hugging Face Hub endpoints that ``spaceserve.publish`` calls through
huggingface_hub 2.4: whoami, repo creation, space info, tree listing, README validation,
preupload + NDJSON commit (what ``upload_folder`` sends for small regular files), secrets,
variables, hardware and runtime stages. It records every request for the tests to assert on.

``/app/...`` plays the deployed Space itself (``/health``, ``/v1/models``, a chat completion that
only accepts the key last stored as the ``API_KEYS`` secret), for runs whose key is generated.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


def git_hash(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def ndjson(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]


@dataclass
class FakeSpace:
    sdk: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)
    hardware: str | None = None

    @property
    def sha(self) -> str:
        return self.commits[-1] if self.commits else "0" * 40


class FakeHub:
    def __init__(self, token: str = "hf_test_write", role: str = "write") -> None:
        self.token = token
        self.role = role
        self.spaces: dict[str, FakeSpace] = {}
        self.requests: list[Request] = []
        # Stages the runtime endpoint walks through, one per poll, the last one repeating.
        self.stages: list[str] = ["BUILDING", "APP_STARTING", "RUNNING"]
        self._stage_index: dict[str, int] = {}
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def calls(self, method: str, pattern: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    def clear(self) -> None:
        self.requests.clear()
        self._stage_index.clear()

    # -- routing ----------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(
                    self.command,
                    parts.path,
                    parse_qs(parts.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length),
                )
                with hub._lock:
                    hub.requests.append(request)
                    status, body, headers = hub.route(request)
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

        return Handler

    def route(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        path, method = request.path, request.method
        if path.startswith("/app/"):
            return self._app(request, path[len("/app") :])
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"error": "Invalid credentials in Authorization header"}, {"X-Error-Code": "InvalidCredentials"}
        if path == "/api/whoami-v2":
            access = {"displayName": "test token", "role": self.role}
            return 200, {"type": "user", "name": "tester", "auth": {"type": "access_token", "accessToken": access}}, {}
        if path == "/api/repos/create" and method == "POST":
            return self._create(request.json())
        if path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}, {}
        match = re.fullmatch(r"/api/spaces/([^/]+/[^/]+)(/.*)?", path)
        if not match:
            return 404, {"error": f"no route {method} {path}"}, {}
        repo_id, rest = match.group(1), match.group(2) or ""
        space = self.spaces.get(repo_id)
        if space is None:
            return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
        return self._space(request, repo_id, space, rest)

    def _create(self, payload: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        repo_id = f"{payload['organization']}/{payload['name']}"
        url = f"{self.url}/spaces/{repo_id}"
        if repo_id in self.spaces:
            return 409, {"error": "You already created this space repo", "url": url}, {}
        if payload.get("type") != "space":
            return 400, {"error": "this fake Hub only makes Spaces"}, {}
        self.spaces[repo_id] = FakeSpace(sdk=payload["sdk"], private=payload.get("visibility") == "private")
        return 200, {"url": url, "name": repo_id}, {}

    def _space(self, request: Request, repo_id: str, space: FakeSpace, rest: str) -> tuple[int, Any, dict[str, str]]:
        method = request.method
        if method == "GET" and (rest == "" or rest.startswith("/revision/")):
            siblings = [{"rfilename": name} for name in sorted(space.files)]
            return (
                200,
                {
                    "id": repo_id,
                    "sha": space.sha,
                    "private": space.private,
                    "sdk": space.sdk,
                    "siblings": siblings,
                    "tags": [],
                },
                {},
            )
        if method == "GET" and rest.startswith("/tree/"):
            entries = [
                {"type": "file", "path": name, "oid": git_hash(data), "size": len(data)}
                for name, data in sorted(space.files.items())
            ]
            return 200, entries, {}
        if method == "POST" and rest.startswith("/preupload/"):
            files = []
            for item in request.json()["files"]:
                existing = space.files.get(item["path"])
                files.append(
                    {
                        "path": item["path"],
                        "uploadMode": "regular",
                        "shouldIgnore": False,
                        "oid": git_hash(existing) if existing is not None else None,
                    }
                )
            return 200, {"files": files}, {}
        if method == "POST" and rest.startswith("/commit/"):
            return self._commit(repo_id, space, request.ndjson())
        if method == "POST" and rest == "/secrets":
            body = request.json()
            space.secrets[body["key"]] = body["value"]
            return 200, {}, {}
        if method == "POST" and rest == "/variables":
            body = request.json()
            space.variables[body["key"]] = body["value"]
            return 200, {k: {"value": v} for k, v in space.variables.items()}, {}
        if method == "POST" and rest == "/hardware":
            space.hardware = request.json()["flavor"]
            return 200, self._runtime(repo_id, space, advance=False), {}
        if method == "GET" and rest == "/runtime":
            return 200, self._runtime(repo_id, space, advance=True), {}
        return 404, {"error": f"no route {method} {rest}"}, {}

    def _commit(self, repo_id: str, space: FakeSpace, lines: list[dict[str, Any]]) -> tuple[int, Any, dict[str, str]]:
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                space.files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                space.files.pop(value["path"], None)
            elif key != "header":
                return 400, {"error": f"unsupported commit line {key}"}, {}
        oid = hashlib.sha1(repr(sorted(space.files.items())).encode(), usedforsecurity=False).hexdigest()
        space.commits.append(oid)
        self._stage_index[repo_id] = 0  # a new commit starts a new build
        return 200, {"commitUrl": f"{self.url}/spaces/{repo_id}/commit/{oid}", "commitOid": oid}, {}

    def _runtime(self, repo_id: str, space: FakeSpace, *, advance: bool) -> dict[str, Any]:
        index = self._stage_index.get(repo_id, len(self.stages) - 1)
        stage = self.stages[min(index, len(self.stages) - 1)]
        if advance:
            self._stage_index[repo_id] = index + 1
        runtime: dict[str, Any] = {
            "stage": stage,
            "hardware": {"current": space.hardware or "cpu-basic", "requested": space.hardware or "cpu-basic"},
        }
        if stage == "BUILD_ERROR":
            runtime["errorMessage"] = "Build failed with exit code: 1"
        return runtime

    # -- the Space itself -------------------------------------------------------------------

    def _app(self, request: Request, path: str) -> tuple[int, Any, dict[str, str]]:
        space = next(iter(self.spaces.values()), None)
        if space is None:
            return 404, {"error": "no Space"}, {}
        presented = request.headers.get("authorization")
        if space.private:
            # The Hub serves a private Space only to a Hub token; the app's key rides in X-API-Key.
            if presented != f"Bearer {self.token}":
                return 404, {"error": "Repository not found"}, {}
            presented = f"Bearer {request.headers.get('x-api-key')}"
        if path == "/health":
            return 200, {"status": "ok", "model": "fake-model"}, {}
        key = space.secrets.get("API_KEYS")
        if not key or presented != f"Bearer {key}":
            return (
                401,
                {
                    "error": {
                        "message": "bad key",
                        "type": "authentication_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                },
                {},
            )
        if path == "/v1/models":
            return 200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}, {}
        if path == "/v1/chat/completions" and request.method == "POST":
            message = {"role": "assistant", "content": "OK"}
            return (
                200,
                {
                    "id": "x",
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1},
                },
                {},
            )
        return 404, {"error": "not found"}, {}


def iter_paths(requests: list[Request]) -> Iterator[str]:
    for request in requests:
        yield f"{request.method} {request.path}"
