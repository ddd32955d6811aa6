"""A small HTTP server on 127.0.0.1 that speaks the Hugging Face Hub's file-resolve protocol.

``huggingface_hub.hf_hub_download`` talks to it unchanged when ``HF_ENDPOINT`` points here:

* ``HEAD /{repo_id}/resolve/{revision}/{filename}``: metadata. Headers ``X-Repo-Commit`` (the
  commit the revision resolves to), ``ETag`` (git blob sha1 for small files; for LFS files
  ``X-Linked-Etag`` = sha256 and ``X-Linked-Size``), ``Content-Length``.
* ``GET`` the same URL: the bytes (``Range`` honoured, for resumed downloads).
* Errors as the Hub sends them: 404 with ``X-Error-Code: RepoNotFound`` / ``RevisionNotFound`` /
  ``EntryNotFound``.

Faults can be injected per file to exercise the client's error paths: ``"500"`` (server error on
every request; huggingface_hub retries HEAD with back-off for ~20 s), ``"500_get"`` (metadata fine,
download fails),
``"corrupt"`` (different bytes served under the right sha256), ``"truncate"`` (GET sends fewer
bytes than HEAD announced), ``"drop_once"`` (the first GET breaks off half way; later ones work).

Uploads (what ``HfApi.create_repo`` and ``HfApi.upload_folder`` of huggingface_hub 2.4 call):

* ``POST /api/repos/create`` ``{"name", "organization", "visibility"?, "type"}``: a repo with one initial
  commit holding ``.gitattributes``; 409 with the repo ``url`` if it exists (``exist_ok`` reads it).
* ``POST /api/validate-yaml`` ``{"content", "repoType"}``: the README's YAML front matter must parse.
* ``POST /api/models/{repo}/preupload/{revision}`` ``{"files": [{"path", "sample", "size"}]}``:
  ``uploadMode`` per file, ``"lfs"`` for weight files (suffixes below) and ``"regular"`` otherwise, or
  ``"regular"`` for everything with ``FakeHub.upload_mode = "regular"``.
* ``POST /{repo}.git/info/lfs/objects/batch`` (git-lfs batch API, basic transfer): an upload and a
  verify action per object not yet stored, no actions for objects already stored.
* ``PUT /_lfs/{oid}`` (the upload action; body plain or chunked): stored only if its sha256 is ``oid``.
  ``POST /_lfs/{oid}/verify``: 200 once stored with the announced size.
* ``POST /api/models/{repo}/commit/{revision}`` (NDJSON: a ``header`` line, then ``file`` (base64),
  ``lfsFile`` (sha256 oid of an uploaded object) and ``deletedFile`` lines): a new commit on the branch;
  answers ``{"commitOid", "commitUrl"}``. Earlier commits stay downloadable by their sha.

Xet storage (the default transfer of huggingface_hub >= 1.0 when ``hf_xet`` is installed) speaks a
separate content-addressed protocol that this server does not implement: tests either disable xet in
the client (``HF_HUB_DISABLE_XET=1``: plain LFS through the endpoints above) or answer ``"regular"`` in
preupload, which the client commits inline without xet. With ``FakeHub.write_token`` set, every write
endpoint except the LFS object URLs (pre-signed on the real Hub) needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    """One model repository. ``files`` / ``commit`` are the head of its branches; commits made through
    the commit endpoint keep the earlier ones in ``history`` (sha -> files), reachable by their sha."""

    files: dict[str, bytes]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    branches: tuple[str, ...] = ("main",)
    history: dict[str, dict[str, bytes]] = field(default_factory=dict)
    private: bool = False

    def resolve(self, revision: str) -> str | None:
        if revision == self.commit or revision in self.branches:
            return self.commit
        if revision in self.history:
            return revision
        return None

    def files_at(self, commit: str) -> dict[str, bytes]:
        return self.files if commit == self.commit else self.history[commit]

    def add_commit(self, files: dict[str, bytes], summary: str) -> str:
        """Make ``files`` the new head; returns the new commit sha."""
        digest = hashlib.sha1(self.commit.encode() + summary.encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + hashlib.sha1(files[path]).digest())
        self.history[self.commit] = self.files
        self.commit, self.files = digest.hexdigest(), dict(files)
        return self.commit


@dataclass
class FakeHub:
    """The server's state; tests mutate it (add repos, inject faults) while it runs."""

    repos: dict[str, FakeRepo] = field(default_factory=dict)
    faults: dict[tuple[str, str], str] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    _dropped: set[tuple[str, str]] = field(default_factory=set)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)
    commits: list[dict] = field(default_factory=list)  # every commit payload received: header + operations
    upload_mode: str = "auto"  # "auto": LFS for weight files; "regular": everything inline in the commit
    write_token: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def upload_mode_for(self, path: str) -> str:
        return "lfs" if self.upload_mode == "auto" and path.endswith(LFS_SUFFIXES) else "regular"

    def add_folder(self, repo_id: str, folder: Path, **kwargs) -> FakeRepo:
        files = {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}
        repo = FakeRepo(files=files, **kwargs)
        self.repos[repo_id] = repo
        return repo


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _error(self, status: int, code: str | None, commit: str | None = None) -> None:
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", code)
            if commit:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _route(self) -> tuple[FakeRepo, str, str, bytes] | None:
            path = unquote(self.path.split("?", 1)[0]).lstrip("/")
            parts = path.split("/")
            # {org}/{name}/resolve/{revision}/{filename...}
            if len(parts) < 5 or parts[2] != "resolve":
                self._error(404, "RepoNotFound")
                return None
            repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            hub.requests.append((self.command, f"{repo_id}/{revision}/{filename}"))
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(401, "RepoNotFound")
                return None
            commit = repo.resolve(revision)
            if commit is None:
                self._error(404, "RevisionNotFound")
                return None
            files = repo.files_at(commit)
            if filename not in files:
                self._error(404, "EntryNotFound", commit)
                return None
            fault = hub.faults.get((repo_id, filename))
            if fault == "500" or (fault == "500_get" and self.command == "GET"):
                self._error(500, None)
                return None
            return repo, commit, filename, files[filename]

        def _headers(self, repo_id: str, commit: str, filename: str, data: bytes, length: int) -> None:
            self.send_header("X-Repo-Commit", commit)
            if filename.endswith(LFS_SUFFIXES):
                sha = hashlib.sha256(data).hexdigest()
                self.send_header("X-Linked-Etag", f'"{sha}"')
                self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("ETag", f'"{git_blob_sha1(data)}"')
            else:
                self.send_header("ETag", f'"{git_blob_sha1(data)}"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(length))
            self.end_headers()

        def do_HEAD(self) -> None:  # noqa: N802 (http.server naming)
            routed = self._route()
            if routed is None:
                return
            repo, commit, filename, data = routed
            repo_id = next(k for k, v in hub.repos.items() if v is repo)
            self.send_response(200)
            self._headers(repo_id, commit, filename, data, len(data))

        def do_GET(self) -> None:  # noqa: N802
            if self.path.startswith("/api/models/"):
                self._model_info()
                return
            routed = self._route()
            if routed is None:
                return
            repo, commit, filename, data = routed
            repo_id = next(k for k, v in hub.repos.items() if v is repo)
            fault = hub.faults.get((repo_id, filename))
            start = 0
            range_header = self.headers.get("Range")
            if range_header and range_header.startswith("bytes="):
                start = int(range_header[6:].split("-", 1)[0] or 0)
            body = data[start:]
            if fault == "corrupt":
                body = bytes(b ^ 0xFF for b in body[:64]) + body[64:]
            elif fault == "truncate":
                body = body[: len(body) // 2]
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            if fault == "drop_once" and (repo_id, filename) not in hub._dropped:
                hub._dropped.add((repo_id, filename))
                self._headers(repo_id, commit, filename, data, len(body))
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self._headers(repo_id, commit, filename, data, len(body))
            self.wfile.write(body)

        # ------------------------------------------------------------------ uploads

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()  # CRLF after each chunk
            return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))

        def _json(self, status: int, payload: object, content_type: str = "application/json", code: str | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorised(self) -> bool:
            if hub.write_token is None or self.headers.get("Authorization") == f"Bearer {hub.write_token}":
                return True
            self._json(401, {"error": "Invalid credentials in Authorization header"})
            return False

        def _base(self) -> str:
            return f"http://{self.headers['Host']}"

        def _repo_or_404(self, repo_id: str) -> FakeRepo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._json(404, {"error": f"Repository not found: {repo_id}"}, code="RepoNotFound")
            return repo

        def do_POST(self) -> None:  # noqa: N802
            path = unquote(self.path.split("?", 1)[0]).lstrip("/")
            body = self._body()
            hub.requests.append(("POST", path))
            parts = path.split("/")
            if path == "api/repos/create":
                self._create_repo(json.loads(body))
            elif path == "api/validate-yaml":
                self._validate_yaml(json.loads(body))
            elif len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] in ("preupload", "commit"):
                repo_id, revision = f"{parts[2]}/{parts[3]}", "/".join(parts[5:])
                if parts[4] == "preupload":
                    self._preupload(repo_id, revision, json.loads(body))
                else:
                    self._commit(repo_id, revision, body)
            elif len(parts) == 6 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
                self._lfs_batch(f"{parts[0]}/{parts[1][:-4]}", json.loads(body))
            elif len(parts) == 3 and parts[0] == "_lfs" and parts[2] == "verify":
                request = json.loads(body)
                stored = hub.lfs_objects.get(parts[1])
                ok = stored is not None and len(stored) == request.get("size") and request.get("oid") == parts[1]
                self._json(200 if ok else 404, {"message": "ok" if ok else f"object {parts[1]} not stored"})
            else:
                self._json(404, {"error": f"no such endpoint: POST /{path}"})

        def do_PUT(self) -> None:  # noqa: N802
            path = unquote(self.path.split("?", 1)[0]).lstrip("/")
            body = self._body()
            hub.requests.append(("PUT", path))
            parts = path.split("/")
            if len(parts) != 2 or parts[0] != "_lfs":
                self._json(404, {"error": f"no such endpoint: PUT /{path}"})
                return
            if hashlib.sha256(body).hexdigest() != parts[1]:
                self._json(400, {"error": f"content does not hash to {parts[1]}"})
                return
            with hub._lock:
                hub.lfs_objects[parts[1]] = body
            self._json(200, {})

        def _model_info(self) -> None:
            """``GET /api/models/{repo}[/revision/{rev}]`` (``HfApi.repo_info``): id, commit sha, file list."""
            parts = unquote(self.path.split("?", 1)[0]).lstrip("/").split("/")
            hub.requests.append(("GET", "/".join(parts)))
            repo_id = f"{parts[2]}/{parts[3]}" if len(parts) >= 4 else ""
            repo = self._repo_or_404(repo_id)
            if repo is None:
                return
            revision = "/".join(parts[5:]) if len(parts) > 5 and parts[4] == "revision" else "main"
            commit = repo.resolve(revision)
            if commit is None:
                self._json(404, {"error": f"Revision not found: {revision}"}, code="RevisionNotFound")
                return
            siblings = [{"rfilename": name} for name in sorted(repo.files_at(commit))]
            self._json(200, {"id": repo_id, "sha": commit, "private": repo.private, "siblings": siblings})

        def _create_repo(self, request: dict) -> None:
            if not self._authorised():
                return
            if request.get("type", "model") not in (None, "model"):
                self._json(400, {"error": "only model repositories here"})
                return
            repo_id = f"{request.get('organization')}/{request['name']}"
            url = f"{self._base()}/{repo_id}"
            with hub._lock:
                if repo_id in hub.repos:
                    self._json(409, {"error": "You already created this model repo", "url": url})
                    return
                repo = FakeRepo(files={}, commit="0" * 40, private=request.get("visibility") == "private")
                repo.add_commit({".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}, "initial commit")
                repo.history.clear()
                hub.repos[repo_id] = repo
            self._json(200, {"url": url, "name": repo_id})

        def _validate_yaml(self, request: dict) -> None:
            content = request.get("content", "")
            errors = []
            if content.startswith("---"):
                try:
                    meta = yaml.safe_load(content.split("---", 2)[1])
                    if not isinstance(meta, dict):
                        errors.append({"message": "metadata must be a YAML mapping"})
                except yaml.YAMLError as exc:
                    errors.append({"message": f"invalid YAML: {exc}"})
            self._json(400 if errors else 200, {"errors": errors, "warnings": []})

        def _preupload(self, repo_id: str, revision: str, request: dict) -> None:
            repo = self._repo_or_404(repo_id)
            if repo is None or not self._authorised():
                return
            commit = repo.resolve(revision)
            if commit is None:
                self._json(404, {"error": f"Revision not found: {revision}"}, code="RevisionNotFound")
                return
            files = repo.files_at(commit)
            answer = []
            for item in request["files"]:
                mode = hub.upload_mode_for(item["path"])
                old = files.get(item["path"])
                oid = None
                if old is not None:
                    oid = hashlib.sha256(old).hexdigest() if mode == "lfs" else git_blob_sha1(old)
                answer.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
            self._json(200, {"files": answer, "commitOid": commit})

        def _lfs_batch(self, repo_id: str, request: dict) -> None:
            if self._repo_or_404(repo_id) is None or not self._authorised():
                return
            objects = []
            for obj in request.get("objects", []):
                entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
                if obj["oid"] not in hub.lfs_objects:
                    entry["actions"] = {
                        "upload": {"href": f"{self._base()}/_lfs/{obj['oid']}"},
                        "verify": {"href": f"{self._base()}/_lfs/{obj['oid']}/verify"},
                    }
                objects.append(entry)
            self._json(200, {"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

        def _commit(self, repo_id: str, revision: str, body: bytes) -> None:
            repo = self._repo_or_404(repo_id)
            if repo is None or not self._authorised():
                return
            if revision not in repo.branches:
                self._json(404, {"error": f"Revision not found: {revision} is not a branch"}, code="RevisionNotFound")
                return
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            if not lines or lines[0].get("key") != "header":
                self._json(400, {"error": "the first NDJSON line must be the header"})
                return
            header = lines[0]["value"]
            files = dict(repo.files)
            for op in lines[1:]:
                key, value = op["key"], op["value"]
                if key == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "lfsFile":
                    data = hub.lfs_objects.get(value["oid"])
                    if data is None or len(data) != value.get("size", len(data)):
                        self._json(422, {"error": f"LFS object {value['oid']} of {value['path']} was not uploaded"})
                        return
                    files[value["path"]] = data
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                else:
                    self._json(400, {"error": f"unsupported commit operation {key!r}"})
                    return
            with hub._lock:
                if header.get("parentCommit") not in (None, repo.commit):
                    self._json(412, {"error": "parent commit is not the head of the branch"})
                    return
                sha = repo.add_commit(files, header.get("summary", ""))
                hub.commits.append({"repo_id": repo_id, "commit": sha, "header": header, "operations": lines[1:]})
            self._json(200, {"success": True, "commitOid": sha, "commitUrl": f"{self._base()}/{repo_id}/commit/{sha}"})

    return Handler


class HubServer:
    """Run a :class:`FakeHub` on 127.0.0.1 in a background thread (context manager)."""

    def __init__(self, hub: FakeHub | None = None):
        self.hub = hub or FakeHub()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self.hub))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
