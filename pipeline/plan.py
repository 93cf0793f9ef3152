"""Work units: shards -> image groups and video chunks (which rows form a shard: pipeline/planner.py).

Everything here is deterministic for the same manifest and settings, so a rerun finds
the same shard names and the same chunk boundaries.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from fractions import Fraction

import pyarrow as pa


@dataclass(frozen=True)
class Item:
    position: int      # row number in the manifest (0-based)
    uri: str
    id: str
    media_type: str    # image | video | auto
    error: str = ""    # a manifest-level problem with this row, if any


@dataclass(frozen=True)
class Shard:
    name: str
    items: tuple[Item, ...]
    # the manifest's other columns for these items, one row per item, joined to the rows at commit
    extras: pa.Table | None = field(default=None, compare=False, hash=False, repr=False)


@dataclass(frozen=True)
class Sampling:
    """Which frames of a video are processed: every Nth, or about `fps` per second."""

    every: int = 1
    fps: float | None = None

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError("sample every must be >= 1")
        if self.fps is not None and self.fps <= 0:
            raise ValueError("sample fps must be > 0")


@dataclass(frozen=True)
class VideoIndex:
    """Presentation timestamps of every frame of a video stream, from demuxing (no decoding)."""

    pts: tuple[int, ...]          # sorted, one per frame; frame_index is the position here
    time_base: Fraction
    width: int
    height: int
    problem: str = ""             # why frames may be missing (truncated file); one error row reports it

    def seconds(self, i: int) -> float:
        return float((self.pts[i] - self.pts[0]) * self.time_base)


@dataclass(frozen=True)
class ChunkPlan:
    chunk: int
    frames: tuple[int, ...]       # selected frame indices, ascending


@dataclass(frozen=True)
class ImageUnit:
    """A group of a shard's images, decoded by one task."""
    shard: str
    group: int                    # the group's number in its shard
    items: tuple[Item, ...]


@dataclass(frozen=True)
class VideoUnit:
    """One chunk of one video, decoded by one task."""
    shard: str
    item: Item
    video: VideoIndex             # the whole video's frame timestamps (a chunk's frames are in `plan`)
    plan: ChunkPlan

    @property
    def items(self) -> tuple[Item, ...]:
        return (self.item,)


def ids_digest(ids_joined: bytes) -> int:
    """40 bits of the sha1 of a shard's ids, "\\n"-joined: what makes its name unique across incremental runs."""
    return int(hashlib.sha1(ids_joined).hexdigest()[:10], 16)


def shard_name(first_position: int, digest: int) -> str:
    """First manifest row + the ids' digest: stable across reruns (the one place the format is written)."""
    return f"shard-{first_position:09d}-{digest:010x}"


def select_frames(index: VideoIndex, sampling: Sampling) -> list[int]:
    """Frame indices to process; a pure function of the whole index, so chunks agree at their borders."""
    n = len(index.pts)
    if sampling.fps is None:
        return list(range(0, n, sampling.every))
    chosen, last_bucket = [], None
    for i in range(n):
        bucket = math.floor(index.seconds(i) * sampling.fps + 1e-9)
        if bucket != last_bucket:
            chosen.append(i)
            last_bucket = bucket
    return chosen[::sampling.every]


def plan_chunks(index: VideoIndex, chunk_seconds: float, sampling: Sampling) -> list[ChunkPlan]:
    """Split the selected frames into chunks of `chunk_seconds` of presentation time."""
    if chunk_seconds <= 0:
        raise ValueError("video chunk seconds must be > 0")
    chunks: dict[int, list[int]] = {}
    for i in select_frames(index, sampling):
        chunks.setdefault(int(index.seconds(i) // chunk_seconds), []).append(i)
    return [ChunkPlan(c, tuple(frames)) for c, frames in sorted(chunks.items())]


def image_units(shard: Shard, per_unit: int) -> list[ImageUnit]:
    images = [i for i in shard.items if i.media_type != "video"]
    return [ImageUnit(shard.name, k // per_unit, tuple(images[k:k + per_unit]))
            for k in range(0, len(images), per_unit)]
