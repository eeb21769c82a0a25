"""Artifact download with Range resume, then size and sha256 checks, then an atomic rename.

Bytes land in ``<name>.part``; a dropped connection leaves the part file, and the next attempt
asks for ``Range: bytes=<have>-``. Only a file whose size and sha256 match the signed manifest
is renamed to its final name, so a half or tampered download is never benchmarked.

The agent downloads only from its own server: :func:`server_url` accepts a server-relative path
of plain characters (no ``@``, ``//``, scheme, ``..``, ``%``, ``?`` or ``\\``) and checks that the
joined URL keeps the server's scheme, host and port; redirects are refused, not followed, so the
``Authorization`` header never reaches another origin.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("edgeslim.agent.download")

CHUNK = 1024 * 1024


class DownloadError(RuntimeError):
    """The download could not finish (network or server trouble) after its retries."""


class VerificationError(RuntimeError):
    """The downloaded bytes do not match the manifest; ``reason`` is a protocol FAIL_* code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class UnsafeURLError(DownloadError):
    """A download path that could lead off the server, or a redirect: nothing is fetched."""


_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._~/-]*$")


def server_url(server: str, path: str) -> str:
    """``server`` + ``path`` when ``path`` is a plain server-relative path; else UnsafeURLError."""
    if (
        not isinstance(path, str)
        or not _SAFE_PATH.match(path)
        or "//" in path
        or any(segment in (".", "..") for segment in path.split("/"))
    ):
        raise UnsafeURLError(f"refusing the download path {path!r}: not a plain server path")
    url = server.rstrip("/") + path
    base, joined = urllib.parse.urlsplit(server), urllib.parse.urlsplit(url)
    if (joined.scheme, joined.netloc) != (base.scheme, base.netloc) or joined.query:
        raise UnsafeURLError(f"refusing the download path {path!r}: it leaves {server}")
    return url


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        raise UnsafeURLError(
            f"the server answered HTTP {code} with a redirect to {newurl!r}; the agent follows "
            "no redirects"
        )


def no_redirect_opener(context: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    handlers: list[urllib.request.BaseHandler] = [_RefuseRedirects()]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return str(digest.hexdigest())


def download(
    url: str,
    dest: Path,
    *,
    credential: str,
    size: int,
    sha256: str,
    attempts: int = 5,
    timeout: float = 30.0,
    on_progress: Callable[[int, int], None] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Path:
    """Fetch ``url`` into ``dest`` and verify it; return ``dest``.

    Raises:
        VerificationError: the bytes are not the ones the manifest names (the part is deleted).
        DownloadError: the server could not be reached or kept failing.
    """
    if dest.exists() and dest.stat().st_size == size and sha256_file(dest) == sha256:
        log.info("%s: already downloaded and verified by an earlier run", dest.name)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error: Exception | None = None
    actual = ""
    for attempt in range(1, attempts + 1):
        try:
            actual = _fetch(
                url,
                part,
                credential=credential,
                size=size,
                timeout=timeout,
                on_progress=on_progress,
                opener=no_redirect_opener(ssl_context),
            )
            break
        except (urllib.error.URLError, http.client.HTTPException, OSError, _Incomplete) as exc:
            last_error = exc
            if isinstance(exc, urllib.error.HTTPError) and exc.code in (401, 403, 404):
                raise DownloadError(f"the server refused the download: HTTP {exc.code}") from exc
            log.warning("download attempt %d/%d stopped: %s", attempt, attempts, exc)
            if attempt < attempts:
                time.sleep(min(0.2 * 2**attempt, 5.0))
    else:
        raise DownloadError(f"download failed after {attempts} attempts: {last_error}")
    have = part.stat().st_size
    if have != size:
        part.unlink(missing_ok=True)
        raise VerificationError("size_mismatch", f"expected {size} bytes, got {have}")
    if actual != sha256:
        part.unlink(missing_ok=True)
        raise VerificationError("hash_mismatch", f"sha256 {actual} != manifest {sha256}")
    os.replace(part, dest)
    return dest


class _Incomplete(Exception):
    pass


def _fetch(
    url: str,
    part: Path,
    *,
    credential: str,
    size: int,
    timeout: float,
    on_progress: Callable[[int, int], None] | None,
    opener: urllib.request.OpenerDirector,
) -> str:
    """Fetch the missing bytes into ``part``; return the sha256 of the whole part file."""
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    if have == size:
        return sha256_file(part)
    request = urllib.request.Request(url, headers={"Authorization": f"Device {credential}"})
    if have:
        log.info("resuming %s from byte %d of %d", part.name, have, size)
        request.add_header("Range", f"bytes={have}-")
    with opener.open(request, timeout=timeout) as response:
        if have and response.status != 206:
            log.info("the server ignored the range request: downloading from the start")
            have = 0
        # Hash while writing (the bytes already on disk first), so nothing is read twice.
        digest = _hash_prefix(part, have)
        mode = "ab" if have else "wb"
        with open(part, mode) as fh:
            got = have
            last_report = 0.0
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                fh.write(chunk)
                digest.update(chunk)
                got += len(chunk)
                if got > size:
                    fh.close()
                    part.unlink(missing_ok=True)
                    raise VerificationError(
                        "size_mismatch", "the server sent more bytes than the manifest says"
                    )
                now = time.monotonic()
                if on_progress is not None and now - last_report > 0.5:
                    on_progress(got, size)
                    last_report = now
    # No fsync: a file torn by a crash fails the size and sha256 check before any use.
    if got < size:
        raise _Incomplete(f"connection ended at {got} of {size} bytes")
    return digest.hexdigest()


def _hash_prefix(path: Path, length: int) -> hashlib._Hash:
    digest = hashlib.sha256()
    if length:
        with open(path, "rb") as fh:
            left = length
            while left > 0 and (chunk := fh.read(min(CHUNK, left))):
                digest.update(chunk)
                left -= len(chunk)
    return digest
