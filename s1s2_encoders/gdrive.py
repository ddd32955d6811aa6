"""Download a public Google Drive file by its id, as Drive serves them today.

The protocol (what :func:`download_drive_file` speaks):

* ``GET {endpoint}/download?id=ID&export=download``, the endpoint being
  ``https://drive.usercontent.google.com`` or ``S1S2_GDRIVE_ENDPOINT`` (as ``HF_ENDPOINT`` points
  huggingface_hub at a mirror; the tests point it at a loopback server).
* A file Drive can scan comes back as the file (``Content-Disposition: attachment; filename=...``).
* A large file (the original checkpoints are 90-220 MiB) comes back as an HTML page, "Google Drive can't
  scan this file for viruses", holding ``<form id="download-form" method="get" action=...>`` with hidden
  inputs ``id``, ``export``, ``confirm`` and ``uuid``; submitting that form (its action URL with those
  inputs as the query) returns the file.
* Any other HTML page is a failure, told apart by its text: the quota page ("Too many users have viewed or
  downloaded this file recently"), a sign-in or permission page, a removed file. HTTP 404 means the file is
  gone. Each raises :class:`~s1s2_encoders.errors.DriveDownloadError` whose ``cause`` says which, with the
  Drive link and the manual route in the message.

The body is streamed to disk as it arrives (never held in memory) with a progress bar
(huggingface_hub's tqdm, so ``HF_HUB_DISABLE_PROGRESS_BARS`` applies), hashed on the way, under a
``.part`` name that is renamed only once every byte announced by ``Content-Length`` has arrived. Connect
and read timeouts (``S1S2_GDRIVE_TIMEOUT`` seconds, default 30) bound every wait.

The HTTP client is the one huggingface_hub brings (``httpx2`` from huggingface_hub 2.x, ``httpx`` in 1.x):
no dependency is added, and no Hugging Face token or header ever goes to Drive (a client of our own).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from .durable import fsync_path
from .errors import DriveDownloadError, OptionError

DEFAULT_ENDPOINT = "https://drive.usercontent.google.com"
ENDPOINT_ENV = "S1S2_GDRIVE_ENDPOINT"
TIMEOUT_ENV = "S1S2_GDRIVE_TIMEOUT"
DEFAULT_TIMEOUT_S = 30.0

CAUSES: dict[str, str] = {
    "quota": "Drive's download quota for this file is used up",
    "access": "Drive asked to sign in or for permission",
    "removed": "Drive says the file was removed",
    "not-found": "the file is gone from Drive (HTTP 404)",
    "html": "Drive answered with an HTML page where the checkpoint was expected",
    "http-error": "Drive answered with an HTTP error",
    "truncated": "the body is shorter than its Content-Length",
    "connection-broken": "the connection broke mid-stream",
    "timeout": "Drive did not answer within the timeout",
    "connect": "Drive could not be reached",
}
"""Values of :attr:`DriveDownloadError.cause <s1s2_encoders.errors.DriveDownloadError>` and what they mean."""

_SNIFF_BYTES = 512
_MAX_PAGE_BYTES = 2 << 20  # a Drive page is ~10 kB; more than this is not a page we understand
_MAX_FORMS = 2  # the virus-scan form is submitted once; a second form means a loop
_FILE_ID = re.compile(r"^[A-Za-z0-9_-]{10,}$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")

# Text that identifies each kind of Drive page (lower case). The virus-scan form is recognised by its
# form id first, because its page also has "Sign in" in its header bar.
_QUOTA_MARKERS = ("too many users have viewed or downloaded this file recently", "quota exceeded")
_REMOVED_MARKERS = (
    "the file you have requested does not exist", "has been removed", "was removed", "has been deleted",
    "no longer available", "violation of google", "terms of service",
)
_ACCESS_MARKERS = ("you need access", "request access", "you need permission", "sign in", "sign-in")


def drive_endpoint() -> str:
    """``S1S2_GDRIVE_ENDPOINT`` as set now, else ``https://drive.usercontent.google.com`` (no trailing slash)."""
    return (os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")


def view_url(file_id: str) -> str:
    """The Drive page of a file, for people (what the original README links)."""
    return f"https://drive.google.com/file/d/{file_id}/view"


def download_url(file_id: str, endpoint: str | None = None) -> str:
    """``{endpoint}/download?id=ID&export=download``: the first request of a download."""
    return f"{(endpoint or drive_endpoint()).rstrip('/')}/download?id={file_id}&export=download"


def timeout_seconds(timeout: float | None = None) -> float:
    """``timeout``, else ``S1S2_GDRIVE_TIMEOUT``, else 30 s: the connect timeout and the longest wait for
    the next bytes of an answer."""
    if timeout is None:
        text = os.environ.get(TIMEOUT_ENV)
        if not text:
            return DEFAULT_TIMEOUT_S
        try:
            timeout = float(text)
        except ValueError:
            raise OptionError(f"{TIMEOUT_ENV}={text!r} is not a number of seconds") from None
    if not timeout > 0:
        raise OptionError(f"the Drive timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


@dataclass(frozen=True)
class DriveFile:
    """A file downloaded by :func:`download_drive_file`.

    Attributes:
        path: where it was written.
        filename: the name Drive gave it (``Content-Disposition``), or ``ID.bin`` when it gave none usable.
        size: bytes written (equal to ``Content-Length`` when Drive sent one).
        sha256: hex sha256 of those bytes.
        url: the URL the bytes came from (the virus-scan form's action and query when there was one).
        passed_virus_scan_page: whether the "can't scan this file for viruses" form was submitted.
    """

    path: Path
    filename: str
    size: int
    sha256: str
    url: str
    passed_virus_scan_page: bool = False


@dataclass
class _Page:
    """What an HTML answer holds: its title, visible text and forms (action, hidden inputs)."""

    title: str = ""
    text: str = ""
    forms: list[dict[str, Any]] = field(default_factory=list)


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = _Page()
        self._form: dict[str, Any] | None = None
        self._in_title = False
        self._skip = 0  # inside <script> / <style>
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag == "form":
            self._form = {"id": a.get("id", ""), "action": a.get("action", ""),
                          "method": a.get("method", "get").lower(), "inputs": {}}
            self.page.forms.append(self._form)
        elif tag == "input" and self._form is not None and a.get("type", "").lower() == "hidden" and a.get("name"):
            self._form["inputs"][a["name"]] = a.get("value", "")
        elif tag == "title":
            self._in_title = True
        elif tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "title":
            self._in_title = False
        elif tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.page.title += data
        elif not self._skip:
            self._text.append(data)

    def close(self) -> None:
        super().close()
        self.page.title = " ".join(self.page.title.split())
        self.page.text = " ".join(" ".join(self._text).split())


def parse_page(html: str) -> _Page:
    parser = _PageParser()
    parser.feed(html)
    parser.close()
    return parser.page


def _looks_like_html(head: bytes) -> bool:
    start = head[:512].lstrip().lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in start[:256]


def _filename(content_disposition: str | None, file_id: str) -> str:
    """The file name of ``Content-Disposition`` (``filename*=UTF-8''...`` preferred), reduced to a plain
    name that cannot leave the download folder; ``ID.bin`` when there is none."""
    name = None
    if content_disposition:
        star = re.search(r"filename\*\s*=\s*[\w-]+'[^']*'([^;]+)", content_disposition, flags=re.I)
        plain = re.search(r'filename\s*=\s*"([^"]*)"|filename\s*=\s*([^;]+)', content_disposition, flags=re.I)
        if star:
            name = unquote(star.group(1).strip())
        elif plain:
            name = (plain.group(1) if plain.group(1) is not None else plain.group(2)).strip()
    if name:
        name = name.replace("\\", "/").rsplit("/", 1)[-1]
    return name if name and _SAFE_NAME.match(name) else f"{file_id}.bin"


def _http_client_module():
    """The HTTP client of the installed huggingface_hub: ``httpx2`` (2.x) or ``httpx`` (1.x)."""
    try:  # huggingface_hub >= 1.30 names the module it uses
        from huggingface_hub.utils import httpx

        return httpx
    except ImportError:
        pass
    try:
        import httpx2 as httpx
    except ImportError:  # huggingface_hub 1.0 - 1.29
        try:
            import httpx  # type: ignore[no-redef]
        except ImportError:
            raise ImportError(
                "downloading the original checkpoints needs the HTTP client of huggingface_hub >= 1.0 (httpx2 or "
                "httpx); upgrade it: pip install -U 'huggingface_hub>=1.0'"
            ) from None
    return httpx


class _Download:
    """One download: the client, the messages, and the steps (first request, form, body)."""

    def __init__(self, file_id: str, dest_dir: Path, endpoint: str, timeout: float, progress: bool,
                 label: str, manual_route: str):
        self.httpx = _http_client_module()
        self.file_id, self.dest_dir, self.endpoint = file_id, dest_dir, endpoint
        self.timeout, self.progress, self.label, self.manual_route = timeout, progress, label, manual_route

    def error(self, cause: str, what: str, url: str | None) -> DriveDownloadError:
        return DriveDownloadError(
            f"{self.label}: could not download the original checkpoint from Google Drive: {what} [{cause}]. "
            f"Nothing was cached.\n  Drive link: {view_url(self.file_id)}\n  {self.manual_route}",
            cause=cause, url=url,
        )

    def run(self) -> DriveFile:
        from . import __version__

        headers = {"User-Agent": f"s1s2-encoders/{__version__}", "Accept-Encoding": "identity"}
        url, params = f"{self.endpoint}/download", {"id": self.file_id, "export": "download"}
        with self.httpx.Client(timeout=self.httpx.Timeout(self.timeout), follow_redirects=True, headers=headers) as client:
            for forms in range(_MAX_FORMS + 1):
                answer = self.request(client, url, params, passed_form=forms > 0)
                if isinstance(answer, DriveFile):
                    return answer
                url, params = answer
            raise self.error("html", f"the virus-scan form was submitted {_MAX_FORMS} times and came back again", url)

    def request(self, client: Any, url: str, params: dict[str, str], *, passed_form: bool):
        httpx = self.httpx
        shown = f"{url}?{'&'.join(f'{k}={v}' for k, v in params.items())}"
        try:
            with client.stream("GET", url, params=params) as response:
                return self.answer(response, passed_form)
        except DriveDownloadError:
            raise
        except httpx.ConnectTimeout as exc:
            raise self.error("timeout", f"no connection to {urlsplit(url).netloc} within {self.timeout:g} s "
                             f"(connect timeout; {TIMEOUT_ENV} sets it)", shown) from exc
        except httpx.TimeoutException as exc:
            raise self.error("timeout", f"no answer from {shown} within {self.timeout:g} s (read timeout; "
                             f"{TIMEOUT_ENV} sets it)", shown) from exc
        except httpx.ConnectError as exc:
            raise self.error("connect", f"could not connect to {urlsplit(url).netloc}: {exc}", shown) from exc
        except httpx.TransportError as exc:
            raise self.error("connection-broken", f"the connection to {shown} failed: {exc}", shown) from exc

    def answer(self, response: Any, passed_form: bool):
        """A file (streamed to disk), the next URL (the virus-scan form), or an error naming the page."""
        url = str(response.url)
        status = response.status_code
        chunks = response.iter_bytes()  # as the bytes arrive, so counts in messages are exact
        head = b""
        try:
            while len(head) < _SNIFF_BYTES:  # enough of the body to tell an HTML page from a checkpoint
                chunk = next(chunks, None)
                if chunk is None:
                    break
                head += chunk
        except self.httpx.TransportError as exc:
            raise self.transfer_error(exc, len(head), _content_length(response), url) from exc
        is_html = "text/html" in response.headers.get("content-type", "").lower() or _looks_like_html(head)
        if is_html:
            return self.page(response, head, chunks, status, url)
        if status == 404:
            raise self.error("not-found", f"HTTP 404 for {url}: the file is gone from Drive, or the id is wrong", url)
        if status in (401, 403):
            raise self.error("access", f"HTTP {status} for {url}: the file is not shared publicly", url)
        if status == 429:
            raise self.error("quota", f"HTTP 429 for {url}: too many downloads of this file recently; try later", url)
        if status != 200:
            raise self.error("http-error", f"HTTP {status} for {url}", url)
        return self.body(response, head, chunks, url, passed_form)

    def page(self, response: Any, head: bytes, chunks: Any, status: int, url: str):
        data = bytearray(head)
        for chunk in chunks:
            data += chunk
            if len(data) > _MAX_PAGE_BYTES:
                break
        page = parse_page(bytes(data[:_MAX_PAGE_BYTES]).decode(response.encoding or "utf-8", errors="replace"))
        title = f" (title {page.title!r})" if page.title else ""
        lower = f"{page.title} {page.text}".lower()
        form = next((f for f in page.forms if f["id"] == "download-form"), None)
        if form is not None and status == 200:
            return self.form_target(form, url)
        if any(m in lower for m in _QUOTA_MARKERS) or status == 429:
            raise self.error("quota", "Drive says \"Too many users have viewed or downloaded this file recently\"; "
                             "its download quota resets within 24 hours, try again later", url)
        if status == 404:
            raise self.error("not-found", f"HTTP 404 for {url}{title}: the file is gone from Drive, or the id is wrong", url)
        if any(m in lower for m in _REMOVED_MARKERS):
            raise self.error("removed", f"Drive says the file was removed or does not exist{title}", url)
        host = urlsplit(url).netloc.lower()
        if host.startswith("accounts.") or "servicelogin" in url.lower() or any(m in lower for m in _ACCESS_MARKERS) \
                or status in (401, 403):
            raise self.error("access", f"Drive answered with a sign-in or permission page{title} at {url}: the file "
                             "is not shared publicly any more", url)
        what = f"HTTP {status}, " if status != 200 else ""
        raise self.error("html", f"{what}an HTML page{title} from {url} where the checkpoint was expected", url)

    def form_target(self, form: dict[str, Any], page_url: str) -> tuple[str, dict[str, str]]:
        inputs = dict(form["inputs"])
        action = urljoin(page_url, form["action"] or page_url)
        if urlsplit(action).scheme not in ("http", "https") or form["method"] != "get":
            raise self.error("html", f"the virus-scan form of {page_url} has an unusable action {form['action']!r} "
                             f"(method {form['method']})", page_url)
        missing = [k for k in ("id", "export", "confirm") if k not in inputs]
        if missing:
            raise self.error("html", f"the virus-scan form of {page_url} lacks the hidden input(s) {', '.join(missing)}",
                             page_url)
        if inputs["id"] != self.file_id:
            raise self.error("html", f"the virus-scan form of {page_url} is for another file ({inputs['id']!r})", page_url)
        target = action.split("?", 1)[0]
        return target, inputs

    def transfer_error(self, exc: Exception, received: int, length: int | None, url: str) -> DriveDownloadError:
        """The error for a transfer that stopped after ``received`` bytes of ``length``."""
        of = f" of {length:,}" if length is not None else ""
        if isinstance(exc, self.httpx.TimeoutException):
            return self.error("timeout", f"no data for {self.timeout:g} s after {received:,}{of} bytes (read timeout; "
                              f"{TIMEOUT_ENV} sets it)", url)
        if isinstance(exc, self.httpx.RemoteProtocolError):
            return self.error("truncated", f"the server closed the connection after {received:,}{of} bytes ({exc})", url)
        return self.error("connection-broken", f"the connection broke after {received:,}{of} bytes "
                          f"({type(exc).__name__}: {exc})", url)

    def body(self, response: Any, head: bytes, chunks: Any, url: str, passed_form: bool) -> DriveFile:
        from huggingface_hub.utils import tqdm

        httpx = self.httpx
        filename = _filename(response.headers.get("content-disposition"), self.file_id)
        length = _content_length(response)
        encoded = response.headers.get("content-encoding", "identity").lower() not in ("", "identity")
        self.dest_dir.mkdir(parents=True, exist_ok=True)
        final = self.dest_dir / filename
        part = self.dest_dir / f"{filename}.part"
        digest = hashlib.sha256()
        received = 0
        try:
            with open(part, "wb") as out, tqdm(total=length, unit="B", unit_scale=True, unit_divisor=1024,
                                               desc=filename, disable=not self.progress) as bar:
                try:
                    for chunk in _chain(head, chunks):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
                except httpx.TransportError as exc:
                    raise self.transfer_error(exc, received, length, url) from exc
                out.flush()
                os.fsync(out.fileno())
            if length is not None and not encoded and received != length:
                raise self.error("truncated", f"received {received:,} bytes, Content-Length announced {length:,}", url)
            os.replace(part, final)
            fsync_path(self.dest_dir)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return DriveFile(path=final, filename=filename, size=received, sha256=digest.hexdigest(), url=url,
                         passed_virus_scan_page=passed_form)


def _content_length(response: Any) -> int | None:
    text = response.headers.get("content-length")
    return int(text) if text and text.isdigit() else None


def _chain(head: bytes, chunks: Any):
    if head:
        yield head
    yield from chunks


def download_drive_file(
    file_id: str,
    dest_dir: str | os.PathLike[str],
    *,
    endpoint: str | None = None,
    timeout: float | None = None,
    progress: bool = True,
    label: str | None = None,
    manual_route: str | None = None,
) -> DriveFile:
    """Download the public Drive file ``file_id`` into ``dest_dir`` (see the module docstring).

    Args:
        file_id: the Drive file id (letters, digits, ``-``, ``_``).
        dest_dir: folder to write into (created); the file gets the name Drive gives it. Only a complete
            file appears under that name (``NAME.part`` while streaming, removed on failure).
        endpoint: Drive's download host; default :func:`drive_endpoint` (``S1S2_GDRIVE_ENDPOINT``).
        timeout: connect timeout and longest wait for more bytes, seconds (default :func:`timeout_seconds`).
        progress: show a progress bar.
        label: how messages name the download (default the file id).
        manual_route: the last line of every error message (how to get the file by hand).

    Raises:
        DriveDownloadError: with ``cause`` one of :data:`CAUSES`.
        ValueError: a malformed file id or timeout.
    """
    if not isinstance(file_id, str) or not _FILE_ID.match(file_id):
        raise ValueError(f"{file_id!r} is not a Google Drive file id")
    route = manual_route or (
        "Manual route: download the file in a browser from the Drive link, then convert it with "
        "`s1s2 convert FILE -o FOLDER` and load the folder."
    )
    job = _Download(file_id, Path(dest_dir), (endpoint or drive_endpoint()).rstrip("/"), timeout_seconds(timeout),
                    progress, label or file_id, route)
    return job.run()


__all__ = [
    "CAUSES", "DEFAULT_ENDPOINT", "ENDPOINT_ENV", "TIMEOUT_ENV", "DriveFile", "download_drive_file",
    "download_url", "drive_endpoint", "timeout_seconds", "view_url",
]
