"""ADD of http(s) URLs: identifying a URL's content for the cache key as cheaply as
possible, downloading it, and the per-URL records that make the cheap way possible
(see builder.steps.add for the ADD semantics as a whole; that module re-exports this
API).

- `identify_url(url, dest_tmp, *, checksum, records_dir, network)` -> URLIdentity:
  what the step's cache key needs (`key`), the way BuildKit's http source computes
  it:
  * `--checksum=<alg>:<hex>` given: the checksum is the content key; no request.
  * else, with a record of an earlier download of this URL that kept an ETag or a
    Last-Modified: one `HEAD`; when every validator (ETag, Last-Modified,
    Content-Length) the server sends agrees with the record, the recorded digest
    and mtime are the key. Otherwise a conditional `GET` (If-None-Match /
    If-Modified-Since): 304 reuses the record, 200 is downloaded right away.
  * else (no record, or the server sent neither ETag nor Last-Modified): the URL
    is downloaded (the only way to know its content); the file is kept in
    `fetched` so a miss does not download it again.
  The key holds the sha256 of the content and the mtime the file will get (from
  Last-Modified; it lands in the layer). With a checksum the key is the checksum
  alone (as BuildKit: the mtime is not known without a request).
- `fetch_identified(identity, dest_tmp, *, records_dir)` -> FetchedURL: the file for
  a cache miss (the one downloaded while identifying, or a fresh download that
  must match the identity).
- `fetch_url(url, dest_tmp, *, checksum, network, records_dir)` -> FetchedURL:
  download into a new file (mode 0600, mtime from Last-Modified); checks
  --checksum; writes the URL's record when `records_dir` is given.
- Records: `records_dir/<sha256(url)>.json` = {url, etag, last_modified, digest,
  filename, size, mtime_ns}, written atomically (rename). A damaged or foreign
  record is ignored (the URL is downloaded).
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from lamina.builder.errors import BuildError

__all__ = ["FetchedURL", "URLIdentity", "URLRecord", "URL_FILE_MODE", "fetch_identified",
           "fetch_url", "identify_url", "is_url_source", "load_record", "url_filename"]

URL_FILE_MODE = 0o600


def is_url_source(src: str) -> bool:
    return src.startswith(("http://", "https://"))


def url_filename(url: str) -> str:
    """The file name BuildKit gives a downloaded URL: the last element of its path
    (Go's path.Base), `__unnamed__` when there is none."""
    stripped = urllib.parse.unquote(urllib.parse.urlsplit(url).path).rstrip("/")
    base = stripped.rpartition("/")[2]
    if base in ("", ".", ".."):
        return "__unnamed__"
    return base


_CHECKSUM = re.compile(r"(sha256|sha384|sha512):([0-9a-f]+)")
_HEX_LEN = {"sha256": 64, "sha384": 96, "sha512": 128}


def _parse_checksum(url: str, checksum: str | None) -> tuple[str, str] | None:
    if not checksum:
        return None
    m = _CHECKSUM.fullmatch(checksum.strip())
    if m is None or len(m.group(2)) != _HEX_LEN[m.group(1)]:
        raise BuildError(f"ADD {url}: invalid --checksum {checksum!r} "
                         "(expected sha256:<64 hex digits>)")
    return m.group(1), m.group(2)


def _check_url(url: str, network: bool) -> None:
    if not is_url_source(url):
        raise BuildError(f"ADD {url}: not an http(s) URL")
    if "\0" in url_filename(url):  # %00: no file can take that name (Go: EINVAL)
        raise BuildError(f"ADD {url}: the file name of the URL holds a NUL byte (%00)")
    if not network:
        raise BuildError(f"ADD {url}: network access is disabled for this build "
                         "(use --network host)")


def _mtime_ns(last_modified: str) -> int | None:
    if not last_modified:
        return None
    try:
        return int(email.utils.parsedate_to_datetime(last_modified).timestamp()) * 10**9
    except (TypeError, ValueError, OverflowError):
        return None


# ---------------------------------------------------------------------------------
# records of earlier downloads

@dataclass(frozen=True)
class URLRecord:
    """What the last download of `url` saw: its validators and its content."""

    url: str
    etag: str
    last_modified: str
    digest: str
    filename: str
    size: int
    mtime_ns: int | None


def _record_path(records_dir: Path, url: str) -> Path:
    return Path(records_dir) / (hashlib.sha256(url.encode("utf-8")).hexdigest() + ".json")


def load_record(records_dir: str | os.PathLike | None, url: str) -> URLRecord | None:
    """The record of the last download of `url`, or None (none, damaged, foreign)."""
    if records_dir is None:
        return None
    try:
        data = json.loads(_record_path(Path(records_dir), url).read_text(encoding="utf-8"))
        record = URLRecord(url=str(data["url"]), etag=str(data["etag"]),
                           last_modified=str(data["last_modified"]), digest=str(data["digest"]),
                           filename=str(data["filename"]), size=int(data["size"]),
                           mtime_ns=None if data["mtime_ns"] is None else int(data["mtime_ns"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if record.url != url or not re.fullmatch(r"sha256:[0-9a-f]{64}", record.digest):
        return None
    return record


def _save_record(records_dir: str | os.PathLike, record: URLRecord) -> None:
    path = _record_path(Path(records_dir), record.url)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            json.dump(asdict(record), f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a record is an optimisation: never fail the build


# ---------------------------------------------------------------------------------
# requests

class _KeepHead(urllib.request.HTTPRedirectHandler):
    """Follow redirects of a HEAD as a HEAD (urllib turns them into GETs), and only
    to http(s): urllib also follows one to ftp://, which Go's client (BuildKit's)
    refuses - a hostile server made lamina speak FTP to any host and port."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        target = urllib.parse.urljoin(req.full_url, newurl)
        if urllib.parse.urlsplit(target).scheme.lower() not in ("http", "https"):
            raise urllib.error.HTTPError(target, code, f"{msg} - redirection to {target!r} "
                                         "is not allowed (only http and https)", headers, fp)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and req.get_method() == "HEAD":
            new.method = "HEAD"
        return new


_OPENER = urllib.request.build_opener(_KeepHead)


def _request(url: str, method: str = "GET", headers: dict[str, str] | None = None):
    return urllib.request.Request(url, method=method,
                                  headers={"User-Agent": "lamina", **(headers or {})})


def _download_error(url: str, e: Exception) -> BuildError:
    if isinstance(e, urllib.error.HTTPError):
        return BuildError(f"ADD {url}: HTTP {e.code} {e.reason}")
    reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
    return BuildError(f"ADD {url}: download failed: {reason}")


@dataclass(frozen=True)
class FetchedURL:
    """A downloaded URL: `path` (mode 0600, mtime from Last-Modified), the sha256
    `digest` of its bytes (for the cache key), the `filename` it lands under."""

    url: str
    path: Path
    digest: str
    filename: str
    size: int
    mtime_ns: int | None


def _save(url: str, resp, dest_tmp: str | os.PathLike, want: tuple[str, str] | None,
          records_dir: str | os.PathLike | None) -> FetchedURL:
    """Write the body of the open response `resp` to a new file under dest_tmp."""
    filename = url_filename(url)
    outdir = Path(dest_tmp) / f"url-{os.getpid()}-{time.monotonic_ns()}"
    outdir.mkdir(mode=0o700)
    out = outdir / filename
    h256 = hashlib.sha256()
    hwant = hashlib.new(want[0]) if want else None
    size = 0
    try:
        with open(out, "xb") as f:
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                h256.update(chunk)
                if hwant is not None:
                    hwant.update(chunk)
                f.write(chunk)
                size += len(chunk)
    except (urllib.error.URLError, OSError) as e:
        raise _download_error(url, e) from None
    digest = "sha256:" + h256.hexdigest()
    if want is not None and hwant is not None and hwant.hexdigest() != want[1]:
        out.unlink()
        raise BuildError(f"ADD {url}: checksum mismatch: expected {want[0]}:{want[1]}, "
                         f"got {want[0]}:{hwant.hexdigest()}")
    last_modified = resp.headers.get("Last-Modified") or ""
    mtime_ns = _mtime_ns(last_modified)
    os.chmod(out, URL_FILE_MODE)
    if mtime_ns is not None:
        os.utime(out, ns=(mtime_ns, mtime_ns))
    if records_dir is not None:
        _save_record(records_dir, URLRecord(
            url=url, etag=resp.headers.get("ETag") or "", last_modified=last_modified,
            digest=digest, filename=filename, size=size, mtime_ns=mtime_ns))
    return FetchedURL(url=url, path=out, digest=digest, filename=filename, size=size,
                      mtime_ns=mtime_ns)


def fetch_url(url: str, dest_tmp: str | os.PathLike, *, checksum: str | None = None,
              network: bool = True, timeout: float = 60.0,
              records_dir: str | os.PathLike | None = None) -> FetchedURL:
    """Download `url` into a new file under the existing directory `dest_tmp`."""
    _check_url(url, network)
    want = _parse_checksum(url, checksum)
    try:
        with _OPENER.open(_request(url), timeout=timeout) as resp:
            return _save(url, resp, dest_tmp, want, records_dir)
    except (urllib.error.URLError, OSError) as e:
        raise _download_error(url, e) from None


# ---------------------------------------------------------------------------------
# identifying a URL's content for the cache key

@dataclass(frozen=True)
class URLIdentity:
    """What a URL contributes to a cache key (`key`), how it was learned (`how`:
    checksum, validated, not-modified, downloaded), and the file when identifying
    had to download it."""

    url: str
    key: str
    how: str
    checksum: str | None = None
    digest: str = ""
    mtime_ns: int | None = None
    fetched: FetchedURL | None = None


def _content_key(digest: str, mtime_ns: int | None) -> str:
    return f"{digest} mtime={'none' if mtime_ns is None else mtime_ns}"


def _from_record(record: URLRecord, how: str) -> URLIdentity:
    return URLIdentity(url=record.url, key=_content_key(record.digest, record.mtime_ns),
                       how=how, digest=record.digest, mtime_ns=record.mtime_ns)


def _from_download(fetched: FetchedURL) -> URLIdentity:
    return URLIdentity(url=fetched.url, key=_content_key(fetched.digest, fetched.mtime_ns),
                       how="downloaded", digest=fetched.digest, mtime_ns=fetched.mtime_ns,
                       fetched=fetched)


def _unchanged(record: URLRecord, headers) -> bool:
    """Do the validators of a HEAD response all agree with the record?"""
    etag = headers.get("ETag") or ""
    last_modified = headers.get("Last-Modified") or ""
    if not etag and not last_modified:
        return False
    if etag != record.etag or last_modified != record.last_modified:
        return False
    length = headers.get("Content-Length")
    return length is None or not length.isdigit() or int(length) == record.size


def identify_url(url: str, dest_tmp: str | os.PathLike, *, checksum: str | None = None,
                 records_dir: str | os.PathLike | None = None, network: bool = True,
                 timeout: float = 60.0) -> URLIdentity:
    """The cache-key identity of `url`, with as little traffic as possible (see the
    module docstring)."""
    _check_url(url, network)
    want = _parse_checksum(url, checksum)
    if want is not None:
        return URLIdentity(url=url, key=f"{want[0]}:{want[1]}", how="checksum",
                           checksum=checksum)
    record = load_record(records_dir, url)
    if record is None or not (record.etag or record.last_modified):
        return _from_download(fetch_url(url, dest_tmp, timeout=timeout,
                                        records_dir=records_dir))
    try:
        with _OPENER.open(_request(url, "HEAD"), timeout=timeout) as resp:
            if resp.status == 200 and _unchanged(record, resp.headers):
                return _from_record(record, "validated")
    except (urllib.error.URLError, OSError):
        pass  # a server may refuse HEAD: the conditional GET decides
    conditions = {}
    if record.etag:
        conditions["If-None-Match"] = record.etag
    if record.last_modified:
        conditions["If-Modified-Since"] = record.last_modified
    try:
        with _OPENER.open(_request(url, headers=conditions), timeout=timeout) as resp:
            return _from_download(_save(url, resp, dest_tmp, None, records_dir))
    except urllib.error.HTTPError as e:
        if e.code == 304:
            e.close()
            return _from_record(record, "not-modified")
        raise _download_error(url, e) from None
    except (urllib.error.URLError, OSError) as e:
        raise _download_error(url, e) from None


def fetch_identified(identity: URLIdentity, dest_tmp: str | os.PathLike, *,
                     records_dir: str | os.PathLike | None = None,
                     timeout: float = 60.0) -> FetchedURL:
    """The downloaded file of an identified URL (for a cache miss): the one
    identifying downloaded, else a new download, which must be what was keyed."""
    if identity.fetched is not None:
        return identity.fetched
    fetched = fetch_url(identity.url, dest_tmp, checksum=identity.checksum, timeout=timeout,
                        records_dir=records_dir)
    if identity.checksum is None and (fetched.digest, fetched.mtime_ns) != (
            identity.digest, identity.mtime_ns):
        raise BuildError(f"ADD {identity.url}: the server's content changed while building "
                         f"(expected {identity.digest}, got {fetched.digest}); build again")
    return fetched
