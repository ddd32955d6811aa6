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
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    """One model repository: a single commit, reachable by its sha and by branch names."""

    files: dict[str, bytes]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    branches: tuple[str, ...] = ("main",)

    def resolve(self, revision: str) -> str | None:
        if revision == self.commit or revision in self.branches:
            return self.commit
        return None


@dataclass
class FakeHub:
    """The server's state; tests mutate it (add repos, inject faults) while it runs."""

    repos: dict[str, FakeRepo] = field(default_factory=dict)
    faults: dict[tuple[str, str], str] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    _dropped: set[tuple[str, str]] = field(default_factory=set)

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
            if filename not in repo.files:
                self._error(404, "EntryNotFound", commit)
                return None
            fault = hub.faults.get((repo_id, filename))
            if fault == "500" or (fault == "500_get" and self.command == "GET"):
                self._error(500, None)
                return None
            return repo, commit, filename, repo.files[filename]

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
