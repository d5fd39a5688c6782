"""A local stand-in for the Hub's upload API, recording what `HfApi.create_repo`/`upload_folder` send.

No Hub server that accepts uploads installs offline, so this implements just the calls an upload makes:
create-repo, create-branch, README.md metadata validation (done locally, as strictly as `ModelCardData`
parses it), preupload (every file answered as a "regular" git blob, so no LFS/xet transfer happens) and the
NDJSON commit whose small files arrive inline, base64-encoded. It can also refuse calls with a status code or
drop connections without answering.
"""

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

import yaml
from huggingface_hub import ModelCard

COMMIT_OID = "0123456789abcdef0123456789abcdef01234567"


class RecordingHub:
    """`with RecordingHub() as hub:` serves on `hub.endpoint`; `hub.requests`, `hub.uploaded`... record calls.

    refuse_status: answer with this HTTP status (e.g. 403) and a Hub-style error body instead of serving.
    drop_connections: close the connection without sending a response instead of serving.
    fail_on: a regular expression; only requests whose path matches it are refused or dropped (default: all).
    """

    def __init__(self, refuse_status: int | None = None, drop_connections: bool = False, fail_on: str = ""):
        self.refuse_status = refuse_status
        self.drop_connections = drop_connections
        self.fail_on = re.compile(fail_on)
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.authorizations: list[str | None] = []
        self.user_agents: list[str | None] = []
        self.created_repos: list[dict] = []
        self.validated_cards: list[str] = []
        self.branches: list[tuple[str, str]] = []  # (repo, branch)
        self.commits: list[dict] = []  # {"repo", "revision", "header", "files": {path: bytes}}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def uploaded(self) -> dict[str, bytes]:
        """Files of all commits, by path in the repo."""
        return {path: data for commit in self.commits for path, data in commit["files"].items()}

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def _reply(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if status >= 400:
                    self.send_header("X-Error-Message", payload["error"])
                self.end_headers()
                self.wfile.write(body)

            def _dispatch(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.requests.append((self.command, self.path))
                hub.authorizations.append(self.headers.get("Authorization"))
                hub.user_agents.append(self.headers.get("User-Agent"))
                failing = hub.fail_on.search(self.path) is not None
                if hub.drop_connections and failing:
                    self.close_connection = True
                    self.connection.close()
                    return
                if hub.refuse_status is not None and failing:
                    self._reply(
                        hub.refuse_status,
                        {"error": "You don't have the rights to create a model under this namespace"},
                    )
                    return
                if self.command == "POST" and self.path == "/api/repos/create":
                    request = json.loads(body)
                    hub.created_repos.append(request)
                    repo_id = (
                        f"{request['organization']}/{request['name']}"
                        if request.get("organization")
                        else request["name"]
                    )
                    self._reply(200, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})
                    return
                if self.command == "POST" and self.path == "/api/validate-yaml":
                    self._validate(json.loads(body)["content"])
                    return
                match = re.fullmatch(r"/api/models/(.+)/(preupload|commit|branch)/([^/?]+)(\?.*)?", self.path)
                if self.command == "POST" and match and match[2] == "preupload":
                    files = json.loads(body)["files"]
                    self._reply(
                        200,
                        {
                            "files": [
                                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                for f in files
                            ],
                            "commitOid": COMMIT_OID,
                        },
                    )
                    return
                if self.command == "POST" and match and match[2] == "branch":
                    hub.branches.append((match[1], match[3]))
                    self._reply(200, {})
                    return
                if self.command == "POST" and match and match[2] == "commit":
                    self._commit(match[1], match[3], body)
                    return
                self._reply(404, {"error": f"RecordingHub does not implement {self.command} {self.path}"})

            def _validate(self, content: str) -> None:
                try:
                    ModelCard(content, ignore_metadata_errors=False)
                except (ValueError, yaml.YAMLError) as err:  # the Hub answers 400 with the reasons
                    self._reply(400, {"error": "Invalid metadata", "errors": [{"message": str(err)}]})
                    return
                hub.validated_cards.append(content)
                self._reply(200, {"errors": [], "warnings": []})

            def _commit(self, repo_id: str, revision: str, body: bytes) -> None:
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                header = next(line["value"] for line in lines if line["key"] == "header")
                files = {}
                for line in lines:
                    if line["key"] == "file":
                        files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                    elif line["key"] != "header":
                        self._reply(
                            400, {"error": f"RecordingHub only accepts inline files, got {line['key']!r}"}
                        )
                        return
                hub.commits.append({"repo": repo_id, "revision": revision, "header": header, "files": files})
                self._reply(
                    200,
                    {
                        "commitUrl": f"{hub.endpoint}/{repo_id}/commit/{COMMIT_OID}",
                        "commitOid": COMMIT_OID,
                        "pullRequestUrl": None,
                    },
                )

            do_GET = do_POST = do_PUT = do_DELETE = _dispatch

        return Handler
