"""Stores folders on object storage: ``s3://bucket/prefix`` (and any fsspec URL).

A remote stores folder has the layout of a local one (``<dataset>/<view>.h5`` and
``pool/<feature key>/seg-<id>.h5``), written by ``precompute push`` or ``precompute run
--stores URL``: segments first, each view after the segments it needs, so a reader never
finds a view whose frames are not there. Nothing else is kept there (the catalogue stays
local). :class:`Remote` is the one place that talks to the object store: listings, whole
objects, parallel ranged GETs, uploads; every error it lets out is a :class:`RemoteError`,
one line that names the URL.

Endpoint and credentials come from the standard AWS environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ...), read by botocore as
the AWS CLI reads them; mirpatch never stores them. Transient errors (503 SlowDown, a reset
connection, a timeout) are retried with backoff by botocore's standard retry mode and by
s3fs; ``MIRPATCH_REMOTE_RETRIES`` (default 8) and ``MIRPATCH_REMOTE_TIMEOUT`` (seconds,
default 60) set how many times and how long each request may take.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import UserError
from .fileio import replace_file

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


class RemoteError(UserError):
    """An object store that cannot be reached or read; the message names the URL."""


def is_url(text: Any) -> bool:
    """Whether ``text`` is a URL of a remote filesystem (``file://`` is a local path)."""
    m = _SCHEME.match(str(text))
    return bool(m) and m.group(1).lower() not in ("file", "local")


def local_path(text: str) -> str:
    """``file:///x`` as ``/x``; anything else unchanged."""
    return str(text)[len("file://") :] if str(text).startswith("file://") else str(text)


def view_stores_url(url: str) -> str:
    """The stores folder of a view's URL: ``URL/<dataset>/<view>.h5`` -> ``URL``."""
    head, _, _ = str(url).rstrip("/").rpartition("/")
    stores, _, _ = head.rpartition("/")
    if not is_url(stores) or stores.endswith("://"):
        raise RemoteError(f"{url}: not the URL of a store (STORES_URL/<dataset>/<store>.h5)")
    return stores


def view_at(url: str) -> tuple[Remote, str]:
    """A view's URL as its stores folder and its path there."""
    remote = Remote(view_stores_url(url))
    return remote, remote.relative(Remote(url).root)


def views_at(url: str) -> tuple[Remote, list[str]]:
    """The view at ``url`` (a ``.h5``), or every view of the stores folder at ``url``: the
    stores folder, and the views' paths there."""
    if url.rstrip("/").endswith(".h5"):
        remote, rel = view_at(url)
        return remote, [rel]
    remote = Remote(url)
    return remote, remote.views()


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The local cache of remote stores: ``cache_dir``, else ``MIRPATCH_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/mirpatch`` (``~/.cache/mirpatch``)."""
    if cache_dir:
        return Path(cache_dir).expanduser().absolute()
    if os.environ.get("MIRPATCH_CACHE_DIR"):
        return Path(os.environ["MIRPATCH_CACHE_DIR"]).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base).absolute() / "mirpatch"


def _setting(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        raise RemoteError(f"{name}={os.environ[name]!r}: expected a number") from None


class Remote:
    """A stores folder at ``url``. Picklable: each process makes its own filesystem client."""

    def __init__(self, url: str):
        m = _SCHEME.match(url)
        if not m:
            raise RemoteError(f"{url}: not a URL (s3://bucket/prefix)")
        self.protocol = m.group(1).lower()
        self.root = url[m.end() :].strip("/")
        if not self.root:
            raise RemoteError(f"{url}: no bucket in the URL")
        self.url = f"{self.protocol}://{self.root}"
        self._fs: tuple[int, Any] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fs": None}

    def __repr__(self) -> str:
        return f"Remote({self.url!r})"

    @property
    def key(self) -> str:
        """A name for this URL in local folders (the cache's mirror of its views)."""
        readable = re.sub(r"[^A-Za-z0-9._-]+", "_", self.root)[:80]
        return f"{self.protocol}/{readable}-{hashlib.sha1(self.url.encode()).hexdigest()[:8]}"

    @property
    def fs(self):
        """This process's fsspec filesystem (made again in a forked child)."""
        if self._fs is None or self._fs[0] != os.getpid():
            import fsspec

            if self._fs is not None:  # the parent's, inherited by fork: never used nor closed
                _forget(self._fs[1])

            options: dict[str, Any] = {}
            if self.protocol in ("s3", "s3a"):
                timeout = _setting("MIRPATCH_REMOTE_TIMEOUT", 60)
                retries = int(_setting("MIRPATCH_REMOTE_RETRIES", 8))
                options = {
                    "config_kwargs": {
                        "retries": {"max_attempts": max(1, retries), "mode": "standard"},
                        "connect_timeout": timeout,
                        "read_timeout": timeout,
                    },
                    "skip_instance_cache": True,
                }
            try:
                fs = fsspec.filesystem(self.protocol, **options)
            except ImportError as e:
                raise RemoteError(
                    f"{self.url}: reading {self.protocol}:// needs a package that is not "
                    f"installed ({e}); for S3: pip install 'mirpatch[s3]'"
                ) from None
            except ValueError as e:
                raise RemoteError(f"{self.url}: {e}") from None
            if self.protocol in ("s3", "s3a"):
                fs.retries = max(1, int(_setting("MIRPATCH_REMOTE_RETRIES", 8)))  # s3fs's own
            self._fs = (os.getpid(), fs)
        return self._fs[1]

    def path(self, rel: str | os.PathLike = "") -> str:
        """The filesystem's path of ``rel`` (a path relative to the stores folder)."""
        rel = str(rel).strip("/")
        return f"{self.root}/{rel}" if rel else self.root

    def url_of(self, rel: str | os.PathLike = "") -> str:
        rel = str(rel).strip("/")
        return f"{self.url}/{rel}" if rel else self.url

    def relative(self, path: str) -> str:
        """A listed path relative to the stores folder."""
        return path[len(self.root) :].strip("/") if path.startswith(self.root) else path

    # -- errors --------------------------------------------------------------------------
    @contextlib.contextmanager
    def errors(self, rel: str | os.PathLike = "") -> Iterator[None]:
        """Any error of the object store as one :class:`RemoteError` line naming the URL."""
        try:
            yield
        except RemoteError:
            raise
        except Exception as e:  # noqa: BLE001 - every client error is said as one line
            raise RemoteError(describe(e, self.url_of(rel))) from e

    # -- reading -------------------------------------------------------------------------
    def ranges(self, rels: Sequence[str], starts: Sequence[int], ends: Sequence[int]) -> list:
        """The bytes ``[start, end)`` of each object, by parallel ranged GETs."""
        if not rels:
            return []
        paths = [self.path(r) for r in rels]
        with self.errors(rels[0]):
            out = self.fs.cat_ranges(paths, list(starts), list(ends), on_error="return")
        for rel, got, s, e in zip(rels, out, starts, ends):
            if isinstance(got, BaseException):
                raise RemoteError(describe(got, self.url_of(rel)))
            if len(got) != e - s:
                raise RemoteError(
                    f"{self.url_of(rel)}: asked for bytes {s}-{e}, got {len(got)} bytes "
                    "(the object is shorter than its view says: was it rewritten?)"
                )
        return out

    def get(self, rel: str, local: str | os.PathLike) -> None:
        """Download an object whole to ``local`` (under a temporary name, then renamed)."""
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{os.getpid()}.part")
        try:
            with self.errors(rel):
                self.fs.get_file(self.path(rel), str(tmp))
            replace_file(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)

    def info(self, rel: str) -> dict[str, Any] | None:
        """Size and version of an object (``size``, ``ETag``), None when there is none."""
        try:
            with self.errors(rel):
                return self.fs.info(self.path(rel))
        except RemoteError as e:
            if isinstance(e.__cause__, FileNotFoundError) and "bucket" not in str(e.__cause__):
                return None
            raise

    def glob(self, pattern: str) -> list[str]:
        """Paths (relative to the stores folder) matching ``pattern``; checks the bucket."""
        return list(self.ls_details(pattern))

    def ls_details(self, pattern: str) -> dict[str, dict[str, Any]]:
        """``{relative path: info}`` of the objects matching ``pattern``, listed now."""
        with self.errors():
            self.fs.invalidate_cache()
            self.fs.ls(self.root.split("/")[0])  # a missing bucket is an error, not nothing
            found = self.fs.glob(self.path(pattern), detail=True)
        return {self.relative(p): d for p, d in sorted(found.items())}

    def mirror(self, rel: str, cache_dir: str | os.PathLike | None = None) -> Path:
        """A local copy of the object ``rel`` (a view), kept under its version (ETag) in the
        cache's mirror of this stores folder: a changed object gets a copy of its own, a copy in
        use is never replaced. The copy's stores folder mirrors this one, so its segments'
        relative paths are this folder's."""
        found = self.info(rel)
        if found is None:
            raise RemoteError(f"{self.url_of(rel)}: no such store")
        tag = str(found.get("ETag") or found.get("etag") or found.get("size")).strip('"')
        version = re.sub(r"[^A-Za-z0-9]", "", tag)[:32] or "0"
        local = self.mirror_root(cache_dir) / version / rel
        if not local.is_file():
            self.get(rel, local)  # under a temporary name, then renamed: whole or absent
        return local

    def mirror_root(self, cache_dir: str | os.PathLike | None = None) -> Path:
        """Where :meth:`mirror` keeps this folder's views (a folder per version of a view)."""
        return cache_root(cache_dir) / "views" / self.key

    def views(self) -> list[str]:
        """The views of this stores folder (paths relative to it)."""
        return [r for r in self.glob("*/*.h5") if not r.startswith("pool/")]

    def find_view(
        self, pyjama: Path, feature_key: str, kind: str, cache_dir=None
    ) -> tuple[str | None, str | None]:
        """``(URL of the view of this pyjama (its sha1) and feature, URL of an older view of a
        pyjama of that name and feature)``, found by the hashes a local one is found by. Views
        are copied into the cache to read them (a view is small)."""
        from .store import StoreError, view_summary

        sha1 = hashlib.sha1(Path(pyjama).read_bytes()).hexdigest()
        stale = None
        for rel in self.views():
            if not Path(rel).name.startswith(f"{kind}-"):
                continue
            try:
                found = view_summary(self.mirror(rel, cache_dir))
            except (StoreError, OSError):  # another format: not this request's
                continue
            if found["feature_key"] != feature_key:
                continue
            if found["pyjama_sha1"] == sha1:
                return self.url_of(rel), None
            if Path(found["pyjama"]).name == Path(pyjama).name:
                stale = self.url_of(rel)
        return None, stale

    # -- writing -------------------------------------------------------------------------
    def put(self, local: str | os.PathLike, rel: str) -> None:
        with self.errors(rel):
            self.fs.put_file(str(local), self.path(rel))

    def remove(self, rels: Sequence[str]) -> None:
        if rels:
            with self.errors(rels[0]):
                self.fs.rm([self.path(r) for r in rels])


_INHERITED: list[Any] = []


def _forget(fs: Any) -> None:
    """Leave a filesystem client made by the parent process alone in a forked child: its
    finalizer would close the parent's connections from a loop of this process (an error
    printed at exit)."""
    import weakref

    _INHERITED.append(fs)  # never collected here
    for f in list(getattr(weakref.finalize, "_registry", {})):
        if f.peek() is not None and f.peek()[0] is fs:
            f.detach()


def describe(e: BaseException, url: str) -> str:
    """An object store's exception as one line naming ``url``."""
    names = {c.__name__ for c in type(e).__mro__}
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "NoCredentialsError" in names or "PartialCredentialsError" in names:
        return (
            f"{url}: no credentials for the object store; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
        )
    if isinstance(e, FileNotFoundError):
        if "bucket" in text.lower():
            return f"{url}: no such bucket ({text})"
        return f"{url}: no such object"
    if isinstance(e, PermissionError):
        return f"{url}: access denied ({text})"
    if isinstance(e, OSError) and e.errno == errno.EBUSY:  # s3fs's word for 503 SlowDown
        return f"{url}: the object store kept answering 503 SlowDown (after retries)"
    timeouts = {"ConnectTimeoutError", "ReadTimeoutError", "FSTimeoutError", "TimeoutError"}
    if names & timeouts or isinstance(e, (asyncio.TimeoutError, TimeoutError)):
        limit = _setting("MIRPATCH_REMOTE_TIMEOUT", 60)
        return f"{url}: timed out (no answer within {limit:g} s, after retries)"
    refused = {"EndpointConnectionError", "ClientConnectorError", "ConnectionRefusedError"}
    if names & refused or isinstance(e, ConnectionRefusedError):
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or "the endpoint"
        return f"{url}: connection refused by {endpoint} (after retries)"
    if isinstance(e, ConnectionError) or "ConnectionClosedError" in names:
        return f"{url}: connection lost after retries ({text})"
    return f"{url}: {type(e).__name__}: {text}"
