"""One wrapper around fsspec for every read and write: local paths, file:// and s3://.

Writes are atomic: a temp file + rename locally, a single PUT on object stores, so a
reader never sees half a file.
"""
from __future__ import annotations

import os
import posixpath
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import make_path_posix

ENDPOINT_ENV = "HUMANSEG_S3_ENDPOINT_URL"


def storage_options(uri: str, endpoint_url: str | None = None) -> dict[str, Any]:
    """fsspec options for a uri: S3 endpoint and retry policy; credentials come from the AWS chain."""
    if not uri.startswith(("s3://", "s3a://")):
        return {}
    endpoint = endpoint_url or os.environ.get(ENDPOINT_ENV) or os.environ.get("AWS_ENDPOINT_URL")
    opts: dict[str, Any] = {
        # botocore's adaptive mode retries throttling, 5xx and timeouts with backoff
        "config_kwargs": {"retries": {"max_attempts": 10, "mode": "adaptive"},
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

    def __post_init__(self) -> None:
        self.root = self.root.rstrip("/") or "/"
        self.fs, self.path = open_fs(self.root, self.endpoint_url)
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        if self.local:
            self.path = os.path.abspath(self.path)

    def __getstate__(self):
        return {"root": self.root, "endpoint_url": self.endpoint_url}

    def __setstate__(self, state):
        self.__init__(**state)

    def full(self, rel: str) -> str:
        """Filesystem path of a relative path (rel never starts with / and has no ..)."""
        return posixpath.join(self.path, rel) if not self.local else os.path.join(self.path, rel)

    def uri(self, rel: str) -> str:
        """User-facing uri of a relative path: what goes into the Parquet rows."""
        return f"{self.root}/{rel}"

    def write_bytes(self, rel: str, data: bytes) -> None:
        target = self.full(rel)
        if self.local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        else:
            self.fs.pipe_file(target, data)  # one PUT: the object appears whole or not at all

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.full(rel))

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.full(rel))

    def list(self, rel: str) -> list[str]:
        """Names (not paths) of the files directly under rel; empty if it does not exist."""
        try:
            entries = self.fs.ls(self.full(rel), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries)

    def read_many(self, rels: list[str]) -> dict[str, bytes]:
        """Read several files at once (concurrently on object stores)."""
        if not rels:
            return {}
        full = {self.full(r): r for r in rels}
        got = self.fs.cat(list(full), on_error="omit")
        return {full[k]: v for k, v in got.items() if k in full}

    def remove(self, rel: str) -> None:
        try:
            self.fs.rm(self.full(rel))
        except FileNotFoundError:
            pass


def read_uri(uri: str, endpoint_url: str | None = None) -> bytes:
    fs, path = open_fs(uri, endpoint_url)
    return fs.cat_file(path)


def open_uri(uri: str, endpoint_url: str | None = None, mode: str = "rb"):
    fs, path = open_fs(uri, endpoint_url)
    return fs.open(path, mode)
