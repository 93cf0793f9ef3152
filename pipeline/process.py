"""Processing one work unit: decode -> letterbox -> model -> masks written -> rows.

Both executors call these functions; only `inference` differs (a local Segmenter, or a
Ray model actor). The unit returns its rows after all of its masks are written.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

import cv2
import numpy as np

from humanseg_batch.model.preprocess import content_size, letterbox_into
from humanseg_batch.model.segmenter import finish_mask
from humanseg_batch.model.temporal import TemporalSmoother

from .decode import (DEFAULT_MAX_PIXELS, DecodeError, decode_chunk, decode_image, probe_video, read_head,
                     read_media, sniff_media_type)
from .faults import pause_point
from .plan import ImageUnit, Item, Sampling, Shard, VideoUnit, image_units, plan_chunks
from .storage import Storage
from .write import ROW_SCHEMA, MaskVideoWriter, chunk_mask_path, coco_rle, encode_png, image_mask_path

FAULT_ENV = "HUMANSEG_FAULT_CRASH_URI"   # test hook: a worker handling a uri containing this exits hard


class Inference(Protocol):
    """Runs the model. `submit` must not keep a reference to `batch` after it returns."""

    def submit(self, batch: np.ndarray) -> Any: ...
    def result(self, token: Any) -> np.ndarray: ...


@dataclass(frozen=True)
class ModelInfo:
    name: str
    weights_sha256: str
    input_height: int
    input_width: int
    threshold: float
    batch_size: int


@dataclass(frozen=True)
class UnitContext:
    output: Storage
    model: ModelInfo
    endpoint_url: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    sampling: Sampling = field(default_factory=Sampling)
    chunk_seconds: float = 10.0
    images_per_unit: int = 16
    rle: bool = False                 # also store each mask as COCO RLE in the row
    temporal_smoothing: bool = False  # video frames: a centred 3-frame average of probabilities (model/temporal.py)


def base_row(item: Item, ctx: UnitContext, shard: str) -> dict:
    """A row with what is known before decoding; every other ROW_SCHEMA column is empty."""
    return dict(dict.fromkeys(ROW_SCHEMA.names), id=item.id, uri=item.uri, media_type=item.media_type, status="ok",
                model=ctx.model.name, weights_sha256=ctx.model.weights_sha256, shard=shard,
                manifest_row=item.position)


def error_row(item: Item, ctx: UnitContext, shard: str, message: str, **extra) -> dict:
    return dict(base_row(item, ctx, shard), status="error", error=message, **extra)


def _resolve_auto(item: Item, ctx: UnitContext) -> Item:
    head = read_head(item.uri, ctx.endpoint_url)
    return Item(item.position, item.uri, item.id, sniff_media_type(head) if head else "image", item.error)


def expand_shard(shard: Shard, ctx: UnitContext) -> tuple[list[ImageUnit | VideoUnit], list[dict]]:
    """Work units of a shard (image groups, video chunks) and the error rows found while planning them."""
    rows: list[dict] = []
    ready: list[Item] = []
    videos: list[VideoUnit] = []
    for item in shard.items:
        if item.error:
            rows.append(error_row(item, ctx, shard.name, item.error))
            continue
        try:
            if item.media_type == "auto":
                item = _resolve_auto(item, ctx)
            if item.media_type != "video":
                ready.append(item)
                continue
            video = probe_video(item.uri, ctx.endpoint_url)
            for plan in plan_chunks(video, ctx.chunk_seconds, ctx.sampling):
                videos.append(VideoUnit(shard.name, item, video, plan))
        except DecodeError as exc:
            rows.append(error_row(item, ctx, shard.name, str(exc)))
        except (OSError, ValueError) as exc:
            rows.append(error_row(item, ctx, shard.name, f"cannot read: {exc}"))
    units = image_units(Shard(shard.name, tuple(ready)), ctx.images_per_unit)
    return [*units, *videos], rows


Frame = tuple[Item, "int | None", "np.ndarray | DecodeError", "tuple[int, int] | None"]


def _image_frames(unit: ImageUnit, ctx: UnitContext) -> Iterator[Frame]:
    for item in unit.items:
        try:
            rgb = decode_image(read_media(item.uri, ctx.endpoint_url), ctx.max_pixels)
            yield item, None, rgb, rgb.shape[:2]
        except DecodeError as exc:
            yield item, None, exc, None
        except (OSError, ValueError) as exc:
            yield item, None, DecodeError(f"cannot read: {exc}"), None


def _video_frames(unit: VideoUnit, ctx: UnitContext) -> Iterator[Frame]:
    if unit.video.problem and unit.plan.chunk == 0:   # once per video: chunk 0 always exists (it holds frame 0)
        yield unit.item, None, DecodeError(unit.video.problem), None
    m = ctx.model
    fit = lambda h, w: content_size(h, w, m.input_height, m.input_width)  # noqa: E731
    try:
        for index, frame, shape in decode_chunk(unit.item.uri, unit.video, unit.plan, ctx.endpoint_url, fit=fit):
            yield unit.item, index, frame, shape
    except DecodeError as exc:   # the file vanished or broke since it was probed
        for index in unit.plan.frames:
            yield unit.item, index, exc, None


class _Sink:
    """Writes the masks of one unit: PNG per image, or one FFV1 file per video chunk."""

    def __init__(self, unit: ImageUnit | VideoUnit, ctx: UnitContext):
        self.unit, self.ctx = unit, ctx
        self.video = None
        if isinstance(unit, VideoUnit):
            self.path = chunk_mask_path(unit.item.id, unit.plan.chunk)

    def put(self, item: Item, mask: np.ndarray) -> tuple[str, int | None]:
        if self.video is None and isinstance(self.unit, VideoUnit):
            self.video = MaskVideoWriter(mask.shape[1], mask.shape[0])
        if self.video is not None:
            return self.ctx.output.uri(self.path), self.video.add(mask)
        path = image_mask_path(item.id)
        self.ctx.output.write_bytes(path, encode_png(mask))
        return self.ctx.output.uri(path), None

    def close(self) -> None:
        if self.video is not None:
            self.ctx.output.write_bytes(self.path, self.video.finish())


class _Batches:
    """A unit's frames on their way through the model: letterboxed into one buffer, sent a batch at a
    time with at most one batch in flight, masks written and rows made as the results come back."""

    def __init__(self, unit: ImageUnit | VideoUnit, ctx: UnitContext, inference: Inference):
        self.unit, self.ctx, self.inference = unit, ctx, inference
        self.chunk = unit.plan.chunk if isinstance(unit, VideoUnit) else None
        self.sink, self.rows = _Sink(unit, ctx), []
        self.stats = {"frames": 0, "errors": 0, "decode_s": 0.0, "model_wait_s": 0.0, "write_s": 0.0}
        m = ctx.model
        self.buf = np.zeros((m.batch_size, m.input_height, m.input_width, 3), np.uint8)
        self.batch: list[tuple] = []
        self.pending: tuple[list[tuple], Any] | None = None
        # a chunk's frames come in order, so a frame's neighbours are the frames before and after it
        self.smoother = TemporalSmoother() if ctx.temporal_smoothing and isinstance(unit, VideoUnit) else None

    def error(self, item: Item, index: int | None, exc: DecodeError) -> None:
        self.rows.append(error_row(item, self.ctx, self.unit.shard, str(exc), frame_index=index,
                                   timestamp_s=_timestamp(self.unit, index), chunk=self.chunk))
        self.stats["errors"] += 1

    def add(self, item: Item, index: int | None, frame: np.ndarray, shape: tuple[int, int]) -> bool:
        """Letterbox a frame into the batch; True when the batch is full."""
        size = letterbox_into(self.buf[len(self.batch)], frame)
        self.batch.append((item, index, shape, size))
        return len(self.batch) == self.ctx.model.batch_size

    def submit(self) -> None:
        """Send the current batch to the model, then finish the one sent before it (one batch in flight)."""
        token = self.inference.submit(self.buf[: len(self.batch)])
        if self.pending is not None:
            self._finish_batch(*self.pending)
        self.pending, self.batch = (self.batch, token), []

    def finish(self) -> tuple[list[dict], dict]:
        if self.batch:
            self.submit()
        if self.pending is not None:
            self._finish_batch(*self.pending)
        t = time.perf_counter()
        if self.smoother is not None:
            for prob, record in self.smoother.flush():
                self._emit(record, prob)
        self.sink.close()
        self.stats["write_s"] += time.perf_counter() - t
        return self.rows, self.stats

    def _finish_batch(self, records: list[tuple], token: Any) -> None:
        t0 = time.perf_counter()
        probs = self.inference.result(token)
        t1 = time.perf_counter()
        for record, prob in zip(records, probs):
            if self.smoother is None:
                self._emit(record, prob)
            else:
                for smoothed, earlier in self.smoother.push(prob, record):
                    self._emit(earlier, smoothed)
        self.stats["model_wait_s"] += t1 - t0
        self.stats["write_s"] += time.perf_counter() - t1
        self.stats["frames"] += len(records)

    def _emit(self, record: tuple, prob: np.ndarray) -> None:
        """A frame's mask from its probabilities: written, and its row made."""
        item, index, shape, size = record
        res = finish_mask(prob, size, shape, self.ctx.model.threshold)
        mask_uri, mask_frame = self.sink.put(item, res.mask)
        self.rows.append(dict(
            base_row(item, self.ctx, self.unit.shard), frame_index=index,
            timestamp_s=_timestamp(self.unit, index), width=shape[1], height=shape[0], mask_uri=mask_uri,
            mask_frame=mask_frame, person_fraction=res.person_fraction, bbox=res.bbox,
            confidence=res.confidence, chunk=self.chunk, rle=coco_rle(res.mask) if self.ctx.rle else None))


def run_unit(unit: ImageUnit | VideoUnit, ctx: UnitContext, inference: Inference) -> tuple[list[dict], dict]:
    """Process one unit end to end; return its rows (masks already written) and timings."""
    crash = os.environ.get(FAULT_ENV)
    if crash and any(crash in i.uri for i in unit.items):
        os._exit(13)
    pause_point("unit")
    # one thread per unit: parallelism comes from running units side by side, and OpenCV's own
    # pool would fight the model's threads for the same cores
    cv2.setNumThreads(1)
    frames = _image_frames(unit, ctx) if isinstance(unit, ImageUnit) else _video_frames(unit, ctx)
    batches = _Batches(unit, ctx, inference)
    t = time.perf_counter()
    for item, index, frame, shape in frames:
        if isinstance(frame, DecodeError):
            batches.error(item, index, frame)
        elif batches.add(item, index, frame, shape):
            batches.stats["decode_s"] += time.perf_counter() - t
            batches.submit()
            t = time.perf_counter()
    batches.stats["decode_s"] += time.perf_counter() - t
    return batches.finish()


def _timestamp(unit: ImageUnit | VideoUnit, index: int | None) -> float | None:
    if index is None or not isinstance(unit, VideoUnit):
        return None
    return unit.video.seconds(index)


class LocalInference:
    """Inference in this process with a Segmenter; `submit` runs the model right away."""

    def __init__(self, segmenter):
        self.segmenter = segmenter

    def submit(self, batch: np.ndarray) -> np.ndarray:
        return self.segmenter.infer(batch)

    def result(self, token: np.ndarray) -> np.ndarray:
        return token
