"""One writer per output: `run`, `retry` and incremental runs hold a lease on OUT while they write.

    OUT/_lease.json   {owner, host, pid, command, token, started, heartbeat}

What is guaranteed:
- Creating the lease is atomic. Local disk: link(2) of a complete temp file, which fails if the name
  exists (POSIX; also on NFSv3+). S3: a PUT with `If-None-Match: *` (AWS S3 since 2024-08, MinIO, moto 5):
  of two writers, exactly one gets it. A store that ignores the header would let both think they hold it;
  each heartbeat then checks the lease still carries its token, and the one that finds another's stops
  committing within one beat (`LeaseLostError`).
- The holder rewrites `heartbeat` every `stale_after / 10` s (at most 30 s). A lease without a heartbeat for
  `stale_after` (10 min, HUMANSEG_LEASE_STALE_S) is stale and may be taken over, with a message; so is one
  whose pid is gone on this same host. Takeover on S3 is a PUT with `If-Match` on the stale lease's ETag
  (one taker wins); locally a rename of the stale file aside, then the atomic create (a taker that moved
  a fresh lease by mistake puts it back).
- Readers (`status`, `query`, `preview`) never need the lease.
"""
from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from .storage import OutputStorageError, Storage

LEASE = "_lease.json"
STALE_ENV = "HUMANSEG_LEASE_STALE_S"
DEFAULT_STALE_S = 600.0


class LeaseHeldError(RuntimeError):
    """Another live writer holds OUT's lease; the message names it."""


class LeaseLostError(OutputStorageError):
    """Our lease was taken over: this process must not commit anything more."""


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - a container user without a passwd entry
        return f"uid {os.getuid()}"


def stale_after_s() -> float:
    return float(os.environ.get(STALE_ENV) or DEFAULT_STALE_S)


def describe(info: dict) -> str:
    age = time.time() - info.get("heartbeat", 0)
    return (f"{info.get('owner')} on {info.get('host')} (pid {info.get('pid')}, `{info.get('command')}`, "
            f"started {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(info.get('started', 0)))}, "
            f"last heartbeat {age:.0f}s ago)")


def _pid_namespace() -> int | None:
    """Containers can share a host name: a pid means something only in the same pid namespace."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _pid_gone(info: dict) -> bool:
    """The holder ran on this host, in this pid namespace, and its process no longer exists."""
    if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return False
    if info.get("pidns") != _pid_namespace():
        return False
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:     # exists, another user's
        return False
    return False


@dataclass
class Lease:
    """A held lease; `check()` raises once it is lost. Stop with `release()`."""
    storage: Storage
    info: dict
    stale_after: float
    etag: str | None = None
    lost: str | None = None
    storage_failed: bool = False        # set by the holder: release() then leaves the lease to go stale
    _stop: threading.Event = field(default_factory=threading.Event)

    def check(self) -> None:
        if self.lost:
            raise LeaseLostError(self.lost)

    def start_heartbeat(self) -> None:
        every = min(30.0, max(0.5, self.stale_after / 10))
        threading.Thread(target=self._beat_loop, args=(every,), daemon=True, name="lease-heartbeat").start()

    def _beat_loop(self, every: float) -> None:
        while not self._stop.wait(every) and not self.lost:
            try:
                self._beat()
            except LeaseLostError as exc:
                self.lost = str(exc)
            except Exception:  # noqa: BLE001 - storage trouble: the run's own writes will report it
                pass

    def _beat(self) -> None:
        current, etag = _read(self.storage)
        if current is None or current.get("token") != self.info["token"]:
            holder = describe(current) if current else "nobody (the lease file is gone)"
            raise LeaseLostError(f"the lease on {self.storage.root} was taken over by {holder}; stopped writing")
        self.info["heartbeat"] = time.time()
        self.etag = _put(self.storage, self.info, if_match=etag)

    def release(self, write: bool = True) -> None:
        """Stop the heartbeat and delete the lease; `write=False` (the storage failed) leaves it to go stale:
        a next writer on this host takes it over at once (our pid is gone), elsewhere after `stale_after`."""
        self._stop.set()
        if not write:
            return
        with contextlib.suppress(Exception):   # an unreachable store: the lease goes stale by itself
            current, _ = _read(self.storage)
            if current and current.get("token") == self.info["token"]:
                self.storage.remove(LEASE)


def _read(storage: Storage) -> tuple[dict | None, str | None]:
    """The lease's content and (on S3) ETag, or (None, None)."""
    try:    # the ETag first: if the lease changes in between, a PUT with it fails instead of overwriting
        etag = None if storage.local else storage.fs.info(storage.full(LEASE), refresh=True).get("ETag")
        data = storage.read_bytes(LEASE)
    except FileNotFoundError:
        return None, None
    try:
        return json.loads(data), etag
    except ValueError:          # a torn or foreign file: treat as held by nobody we know, and stale
        return {"heartbeat": 0}, etag


def _put(storage: Storage, info: dict, if_match: str | None) -> str | None:
    """Overwrite the lease (S3: only if it is still the version we read). Returns the new ETag."""
    data = json.dumps(info, indent=2).encode()
    if storage.local:
        storage.write_bytes(LEASE, data)
        return None
    try:
        out = storage.fs.pipe_file(storage.full(LEASE), data, IfMatch=if_match) if if_match else \
            storage.fs.pipe_file(storage.full(LEASE), data)
    except OSError as exc:
        if "Precondition" in str(exc) or getattr(exc, "errno", None) == 22:
            raise LeaseLostError(f"the lease on {storage.root} was taken over (it changed under us); "
                                 "stopped writing") from exc
        raise
    return (out or {}).get("ETag")


def _take_over(storage: Storage, stale: dict, etag: str | None) -> bool:
    """Replace a stale lease so that of several takers one wins; True if we may now create ours."""
    if not storage.local:
        return True     # the create below is conditional on the ETag instead (see acquire)
    path = storage.full(LEASE)
    aside = f"{path}.stale-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True
    with open(aside, "rb") as f:
        try:
            token = json.loads(f.read()).get("token")
        except ValueError:      # torn or foreign: as stale as the one we read
            token = stale.get("token")
    if token != stale.get("token"):   # a fresh lease: put it back
        with contextlib.suppress(OSError):
            os.link(aside, path)
    os.remove(aside)
    return True


def _try_acquire(storage: Storage, info: dict, stale_after: float, log) -> tuple[bool, dict | None]:
    """One attempt: (True, None) if we hold the lease now, else (False, holder)."""
    data = json.dumps(info, indent=2).encode()
    if storage.create_exclusive(LEASE, data):
        return True, None
    holder, etag = _read(storage)
    if holder is None:
        return False, {"owner": "?", "heartbeat": time.time()}     # released just now: try again
    age = time.time() - holder.get("heartbeat", 0)
    if age < stale_after and not _pid_gone(holder):
        return False, holder
    log(f"taking over a stale lease on {storage.root}: {describe(holder)}")
    if not storage.local:
        try:
            _put(storage, info, if_match=etag)
            return True, None
        except LeaseLostError:
            return False, holder
    _take_over(storage, holder, etag)
    return storage.create_exclusive(LEASE, data), holder


def acquire(root: str, endpoint_url: str | None, command: str, wait: bool = False, log=print) -> Lease:
    """Take OUT's lease, or raise LeaseHeldError naming the holder (`wait`: poll until it is free or stale)."""
    storage = Storage(root, endpoint_url)
    stale_after = stale_after_s()
    now = time.time()
    info = {"owner": _user(), "host": socket.gethostname(), "pid": os.getpid(), "pidns": _pid_namespace(),
            "command": command, "token": uuid.uuid4().hex, "started": now, "heartbeat": now}
    said = False
    while True:
        ok, holder = _try_acquire(storage, info, stale_after, log)
        if ok:
            lease = Lease(storage, info, stale_after)
            if not storage.local:
                lease.etag = _read(storage)[1]
            lease.start_heartbeat()
            return lease
        if not wait:
            raise LeaseHeldError(f"{root} is being written by {describe(holder)}. Wait for it (--wait), or if that "
                                 f"process is gone, its lease expires {stale_after:.0f}s after its last heartbeat.")
        if not said:
            log(f"waiting for the writer of {root}: {describe(holder)}")
            said = True
        time.sleep(min(5.0, max(0.2, stale_after / 20)))


@contextlib.contextmanager
def holding(root: str, endpoint_url: str | None, command: str, wait: bool = False, log=print):
    """OUT's lease for a `with` block. After a failure of the storage itself (OutputStorageError, or
    `storage_failed` set by the holder) it is left to go stale instead of spending more minutes of
    retries on deleting it."""
    lease = acquire(root, endpoint_url, command, wait, log)
    try:
        yield lease
    except OutputStorageError:
        lease.storage_failed = True
        raise
    finally:
        lease.release(write=not lease.storage_failed)
