"""A small HTTP server on 127.0.0.1 that behaves as Google Drive's download endpoint does.

``s1s2_encoders.gdrive`` talks to it unchanged when ``S1S2_GDRIVE_ENDPOINT`` points here:

* ``GET /download?id=ID&export=download``: a file in ``"direct"`` mode comes back as the file
  (``Content-Type: application/octet-stream``, ``Content-Disposition: attachment; filename="NAME"``,
  ``Content-Length``). A file in ``"virus-scan"`` mode (what Drive does for files it is too large to scan,
  as the original checkpoints are) comes back as the HTML page "Google Drive can't scan this file for
  viruses" holding ``<form id="download-form" action="{endpoint}/download" method="get">`` with hidden inputs
  ``id``, ``export``, ``confirm=t`` and a per-file ``uuid``.
* The same URL with ``confirm=t&uuid=UUID`` (the submitted form): the file. A wrong uuid gets the form again.
* Unknown ids: HTTP 404 with Google's HTML error page.

Faults per file id (``FakeDrive.faults``), as Drive and networks fail:

* ``"quota"``: the "Too many users have viewed or downloaded this file recently" page (HTTP 200, HTML).
* ``"signin"``: a 302 redirect to ``/ServiceLogin?continue=...``, which answers with a Google sign-in page.
* ``"removed"``: the page Drive shows for a file removed for a Terms of Service violation (HTTP 200, HTML).
* ``"404"``: HTTP 404 (the file is gone).
* ``"html-body"``: an HTML page ("Loading...") sent with the file's headers (attachment, octet-stream).
* ``"truncate"``: ``Content-Length`` of the whole file, half of it sent, the connection closed cleanly.
* ``"reset"``: half of the file sent, then the connection reset (TCP RST).
* ``"stall"``: half of the file sent, then nothing for ``FakeDrive.stall_s`` seconds.
* ``"corrupt"``: the first 64 bytes of the file inverted (same length).

``FakeDrive.requests`` records every request (path, query); ``FakeDrive.transfers`` the file ids whose bytes
were sent (one per download). ``FakeDrive.body_delay_s`` waits before each file body, so that concurrent
clients overlap.
"""

from __future__ import annotations

import html
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

VIRUS_SCAN_PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>
<meta http-equiv="content-type" content="text/html; charset=utf-8"/><style>.uc-main{{padding-top:50px}}</style>
<script>window.google = {{kEI: "x"}};</script></head><body><div class="uc-header"><a href="https://accounts.google.com/ServiceLogin">Sign in</a></div>
<div class="uc-main"><div id="uc-text"><p class="uc-warning-caption">Google Drive can't scan this file for viruses.</p>
<p class="uc-warning-subcaption"><span class="uc-name-size"><a href="/open?id={file_id}">{name}</a> ({size})</span>
is too large for Google to scan for viruses. Would you still like to download this file?</p>
<form id="download-form" action="{action}" method="get"><input type="submit" id="uc-download-link"
class="goog-inline-block jfk-button jfk-button-action" value="Download anyway"/><input type="hidden" name="id" value="{file_id}">
<input type="hidden" name="export" value="download"><input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="{uuid}"></form>
</div></div><div class="uc-footer"><hr class="uc-footer-divider"></div></body></html>"""

QUOTA_PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title>
<meta http-equiv="content-type" content="text/html; charset=utf-8"/></head><body><div class="uc-main">
<div id="uc-text"><p class="uc-error-caption">Sorry, you can&#39;t view or download this file at this time.</p>
<p class="uc-error-subcaption">Too many users have viewed or downloaded this file recently. Please try accessing the
file again later. If the file you are trying to access is particularly large or is shared with many people, it may take
up to 24 hours to be able to view or download the file. If you still can't access a file after 24 hours, contact your
domain administrator.</p></div></div></body></html>"""

REMOVED_PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Page Not Found</title></head><body>
<div class="uc-main"><p class="uc-error-caption">Sorry, this file has been removed.</p>
<p class="uc-error-subcaption">This file was removed because it is in violation of Google's Terms of Service.</p>
</div></body></html>"""

SIGNIN_PAGE = """<!DOCTYPE html><html lang="en"><head><title>Sign in - Google Accounts</title></head><body>
<div><h1>Sign in</h1><p>to continue to Google Drive</p><form method="post" action="/signin/v2/challenge">
<input type="email" name="identifier"><input type="hidden" name="continue" value="{cont}"></form></div></body></html>"""

LOADING_PAGE = """<!DOCTYPE html><html><head><title>Google Drive</title></head><body><p>Loading...</p>
<noscript>JavaScript is needed to continue.</noscript></body></html>"""

NOT_FOUND_PAGE = """<!DOCTYPE html><html lang=en><meta charset=utf-8><title>Error 404 (Not Found)!!1</title>
<p><b>404.</b> <ins>That's an error.</ins><p>The requested URL was not found on this server. <ins>That's all we know.</ins>"""


@dataclass
class DriveFileSpec:
    """One file on the fake Drive: its name (``Content-Disposition``), bytes, and how Drive serves it."""

    name: str
    data: bytes
    mode: str = "virus-scan"  # or "direct"
    uuid: str = "6e1ae3f4-57a0-4c3c-9a2b-2f1d0c7e5b19"


@dataclass
class FakeDrive:
    """The server's state; tests add files and faults while it runs."""

    files: dict[str, DriveFileSpec] = field(default_factory=dict)
    faults: dict[str, str] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    transfers: list[str] = field(default_factory=list)
    stall_s: float = 2.0
    body_delay_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, file_id: str, name: str, data: bytes, mode: str = "virus-scan") -> DriveFileSpec:
        spec = DriveFileSpec(name=name, data=data, mode=mode)
        self.files[file_id] = spec
        return spec

    def transfers_of(self, file_id: str) -> int:
        return sum(1 for t in self.transfers if t == file_id)


def _make_handler(drive: FakeDrive) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _send(self, status: int, body: bytes, content_type: str = "text/html; charset=utf-8",
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _base(self) -> str:
            return f"http://{self.headers['Host']}"

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            with drive._lock:
                drive.requests.append((parts.path, query))
            if parts.path == "/ServiceLogin":
                self._send(200, SIGNIN_PAGE.format(cont=html.escape(query.get("continue", ""))).encode())
                return
            if parts.path != "/download":
                self._send(404, NOT_FOUND_PAGE.encode())
                return
            file_id = query.get("id", "")
            spec = drive.files.get(file_id)
            fault = drive.faults.get(file_id)
            if spec is None or fault == "404":
                self._send(404, NOT_FOUND_PAGE.encode())
                return
            if fault == "quota":
                self._send(200, QUOTA_PAGE.encode())
                return
            if fault == "removed":
                self._send(200, REMOVED_PAGE.encode())
                return
            if fault == "signin":
                target = quote(f"https://drive.usercontent.google.com{self.path}", safe="")
                self.send_response(302)
                self.send_header("Location", f"{self._base()}/ServiceLogin?continue={target}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            confirmed = query.get("confirm") == "t" and query.get("uuid") == spec.uuid
            if spec.mode == "virus-scan" and not confirmed:
                page = VIRUS_SCAN_PAGE.format(file_id=file_id, name=html.escape(spec.name), size=f"{len(spec.data) >> 20}M",
                                              action=f"{self._base()}/download", uuid=spec.uuid)
                self._send(200, page.encode())
                return
            self._file(file_id, spec, fault)

        def _file(self, file_id: str, spec: DriveFileSpec, fault: str | None) -> None:
            with drive._lock:
                drive.transfers.append(file_id)
            if drive.body_delay_s:
                time.sleep(drive.body_delay_s)
            data = spec.data
            if fault == "html-body":
                data = LOADING_PAGE.encode()
            elif fault == "corrupt":
                data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Disposition", f'attachment; filename="{spec.name}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if fault in ("truncate", "reset", "stall"):
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                if fault == "truncate":
                    self.connection.shutdown(socket.SHUT_RDWR)
                elif fault == "reset":
                    time.sleep(0.05)  # let the first half reach the client before the RST
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                else:
                    time.sleep(drive.stall_s)
                return
            self.wfile.write(data)

    return Handler


class DriveServer:
    """Run a :class:`FakeDrive` on 127.0.0.1 in a background thread (context manager)."""

    def __init__(self, drive: FakeDrive | None = None):
        self.drive = drive or FakeDrive()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self.drive))
        self._server.daemon_threads = True
        # A short poll interval: stop() returns at once, which keeps many short tests fast.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "DriveServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "DriveServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

