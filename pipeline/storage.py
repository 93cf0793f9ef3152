"""One wrapper around fsspec for every read and write: local paths, file:// and s3://.

Writes are atomic: a temp file + rename locally, a single PUT on object stores, so a
reader never sees half a file. A failure of the whole output storage (unreachable, no credentials,
disk full, read-only) is raised as `OutputStorageError` with a one-line reason, so that commands can
end with it instead of a traceback; an error about one path (a file where a folder must go) is not.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import os
import posixpath
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import make_path_posix

ENDPOINT_ENV = "HUMANSEG_S3_ENDPOINT_URL"
# Each S3 request is tried this many times (botocore adaptive backoff, 10 s connect timeout): an
# unreachable endpoint is given up after about a minute, a pause of that length is ridden out.
RETRY_ATTEMPTS_ENV = "HUMANSEG_S3_RETRY_ATTEMPTS"
TEMP_MARK = ".tmp-"     # in the names of local temp files (write_bytes); removed by the next writer


class OutputStorageError(OSError):
    """The output storage as a whole failed; `str()` is the one-line reason."""


def storage_failure(exc: BaseException, where: str) -> str | None:
    """The one-line reason if `exc` is a failure of the storage as a whole, else None."""
    try:
        from botocore import exceptions as boto
    except ImportError:     # no S3 support installed: only local failures exist
        boto = None
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full at {where}"
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return f"read-only file system at {where}"
    if boto and isinstance(exc, (boto.NoCredentialsError, boto.PartialCredentialsError,
                                           boto.CredentialRetrievalError, boto.ProfileNotFound)):
        return f"no credentials for {where} (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or a role)"
    if boto and isinstance(exc, (boto.ConnectionError, boto.HTTPClientError)) or isinstance(exc, TimeoutError):
        return f"output storage unreachable: {where} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
    if isinstance(exc, PermissionError) and "://" in where:   # S3 refused our credentials for the bucket
        return f"no permission for {where}: {str(exc).splitlines()[0][:200]}"
    return None


def _temp_copy(target: str, data: bytes | None = None, source: str | None = None) -> str:
    """A complete local file next to `target` (of `data`, or a copy of the file `source`), to be renamed
    or linked there."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = f"{target}{TEMP_MARK}{uuid.uuid4().hex[:8]}"
    try:
        if source is not None:
            shutil.copyfile(source, tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(data)
    except BaseException:   # disk full, a signal: no half-written temp file stays behind
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return tmp


def _replace(tmp: str, target: str) -> None:
    """Rename a complete temp file onto its target (atomic), or remove it."""
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _guarded(method):
    """Raise storage-wide failures of a Storage method as OutputStorageError (others as they are)."""
    @functools.wraps(method)
    def wrapper(self, rel, *args, **kwargs):
        try:
            return method(self, rel, *args, **kwargs)
        except OutputStorageError:
            raise
        except Exception as exc:
            reason = storage_failure(exc, self.uri(rel) if isinstance(rel, str) else self.root)
            if reason is None:
                raise
            raise OutputStorageError(reason) from exc
    return wrapper


def storage_options(uri: str, endpoint_url: str | None = None) -> dict[str, Any]:
    """fsspec options for a uri: S3 endpoint and retry policy; credentials come from the AWS chain."""
    if not uri.startswith(("s3://", "s3a://")):
        return {}
    endpoint = endpoint_url or os.environ.get(ENDPOINT_ENV) or os.environ.get("AWS_ENDPOINT_URL")
    attempts = int(os.environ.get(RETRY_ATTEMPTS_ENV) or 10)
    opts: dict[str, Any] = {
        # botocore's adaptive mode retries throttling, 5xx and timeouts with backoff
        "config_kwargs": {"retries": {"max_attempts": attempts, "mode": "adaptive"},
                          "connect_timeout": 10, "read_timeout": 60},
    }
    if endpoint:
        opts["client_kwargs"] = {"endpoint_url": endpoint}
    return opts


def open_fs(uri: str, endpoint_url: str | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and path for a uri (plain paths are local)."""
    if "://" not in uri:   # a plain path is a file name as is: fsspec would read '::' in it as a url chain
        return fsspec.filesystem("file"), make_path_posix(uri)
    if uri.startswith("s3a://"):
        uri = "s3://" + uri[len("s3a://"):]
    return url_to_fs(uri, **storage_options(uri, endpoint_url))


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


@dataclass
class Storage:
    """A root folder (local or remote) with relative-path helpers."""

    root: str
    endpoint_url: str | None = None
    # called before each write or delete: the lease's check (pipeline/lease.py); driver-side only,
    # it does not travel to workers with the pickled Storage
    writer_check: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self.root = self.root.rstrip("/") or "/"
        self.fs, self.path = open_fs(self.root, self.endpoint_url)
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        if self.local:
            self.path = os.path.abspath(self.path)
            if "://" not in self.root:   # mask_uri must resolve from any folder: absolute, not as typed
                self.root = self.path

    def __getstate__(self):
        return {"root": self.root, "endpoint_url": self.endpoint_url}

    def __setstate__(self, state):
        self.__init__(**state)

    def _check_writer(self) -> None:
        if self.writer_check is not None:
            self.writer_check()

    def full(self, rel: str) -> str:
        """Filesystem path of a relative path (rel never starts with / and has no ..)."""
        return posixpath.join(self.path, rel) if not self.local else os.path.join(self.path, rel)

    def uri(self, rel: str) -> str:
        """User-facing uri of a relative path: what goes into the Parquet rows."""
        return f"{self.root}/{rel}"

    @_guarded
    def write_bytes(self, rel: str, data: bytes) -> None:
        self._check_writer()
        target = self.full(rel)
        if self.local:
            _replace(_temp_copy(target, data), target)
        else:
            self.fs.pipe_file(target, data)  # one PUT: the object appears whole or not at all

    @_guarded
    def put_file(self, rel: str, local_path: str) -> None:
        """write_bytes for a large local file, streamed (S3: a multipart upload, whole or not at all)."""
        self._check_writer()
        target = self.full(rel)
        if self.local:
            _replace(_temp_copy(target, source=local_path), target)
        else:
            self.fs.put_file(local_path, target)

    @_guarded
    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Write a new file only if none exists, atomically; False if one does. Local: link(2) of a
        complete temp file (fails if the name exists); S3: a PUT with If-None-Match: *."""
        target = self.full(rel)
        if not self.local:
            try:
                self.fs.pipe_file(target, data, mode="create")
                return True
            except FileExistsError:
                return False
        tmp = _temp_copy(target, data)
        try:
            os.link(tmp, target)
            return True
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(OSError):
                os.remove(tmp)

    @_guarded
    def sizes(self, rel: str) -> dict[str, int]:
        """Name -> size in bytes of the files directly under rel; empty if it does not exist."""
        try:
            entries = self.fs.ls(self.full(rel), detail=True, refresh=True)
        except FileNotFoundError:
            return {}
        return {posixpath.basename(e["name"].rstrip("/")): e.get("size")
                for e in entries if e.get("type") != "directory"}

    @_guarded
    def open(self, rel: str, mode: str = "rb"):
        return self.fs.open(self.full(rel), mode)

    def remove_temp_files(self, rel: str, recursive: bool = False) -> list[str]:
        """Delete local temp files left under rel by a killed write (none exist on S3); relative paths.
        A walk of a million mask files takes seconds, so `recursive` is for folders that need it."""
        if not self.local:
            return []
        if recursive:
            top = self.full(rel)
            found = [os.path.relpath(os.path.join(d, n), self.path) for d, _, names in os.walk(top)
                     for n in names if TEMP_MARK in n]
        else:
            found = [f"{rel}/{n}" if rel else n for n in self.list(rel) if TEMP_MARK in n]
        for path in found:
            self.remove(path)
        return found

    @_guarded
    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.full(rel))

    @_guarded
    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.full(rel))

    @_guarded
    def list(self, rel: str) -> list[str]:
        """Names (not paths) of the files directly under rel; empty if it does not exist."""
        try:
            entries = self.fs.ls(self.full(rel), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries)

    @_guarded
    def read_many(self, rels: list[str]) -> dict[str, bytes]:
        """Read several files at once (concurrently on object stores)."""
        if not rels:
            return {}
        full = {self.full(r): r for r in rels}
        got = self.fs.cat(list(full), on_error="omit")
        return {full[k]: v for k, v in got.items() if k in full}

    @_guarded
    def remove(self, rel: str) -> None:
        self._check_writer()
        try:
            self.fs.rm(self.full(rel))
        except FileNotFoundError:
            pass


    @_guarded
    def remove_many(self, rels: list[str]) -> None:
        """Delete several files (one request per 1000 on S3); missing ones are no error."""
        self._check_writer()
        if self.local:      # one unlink each; threads overlap them (1 ms each on a busy disk)
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda rel: self.remove(rel), rels))
        elif rels:
            try:
                self.fs.rm([self.full(r) for r in rels])
            except FileNotFoundError:   # some already gone: the rest one by one
                for rel in rels:
                    self.remove(rel)


def read_uri(uri: str, endpoint_url: str | None = None) -> bytes:
    fs, path = open_fs(uri, endpoint_url)
    return fs.cat_file(path)


def open_uri(uri: str, endpoint_url: str | None = None, mode: str = "rb"):
    fs, path = open_fs(uri, endpoint_url)
    return fs.open(path, mode)
