"""Decoding: images through fsspec + OpenCV, video chunks through PyAV (seek, then a frame range)."""
from __future__ import annotations

import os
import stat
import struct
from contextlib import contextmanager
from fractions import Fraction
from typing import Iterator

import av
import cv2
import numpy as np

from .plan import ChunkPlan, Item, VideoIndex
from .storage import is_remote, open_uri, read_uri, storage_failure

DEFAULT_MAX_PIXELS = 100_000_000
MIN_SIDE = 2


class DecodeError(Exception):
    """One item (or frame) could not be decoded; becomes an error row."""


def _local_path(uri: str) -> str | None:
    if uri.startswith("file://"):
        return uri[len("file://"):]
    return None if is_remote(uri) else uri


_SPECIAL = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
            (stat.S_ISSOCK, "a socket"))


def _refuse_special(uri: str) -> None:
    """Refuse a local path that is no regular file by its type, before reading a byte: /dev/zero never
    ends, a FIFO blocks."""
    local = _local_path(uri)
    if local is None:
        return
    mode = os.stat(local).st_mode
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(local)
    for test, kind in _SPECIAL:
        if test(mode):
            raise DecodeError(f"not a regular file ({kind}): {uri}")


@contextmanager
def _reading(uri: str):
    """Turn the usual reasons a file cannot be read into DecodeErrors with a plain message; the input's
    storage failing (no credentials, unreachable, timeout) is this item's error, not the shard's."""
    try:
        _refuse_special(uri)
        yield
    except FileNotFoundError:
        raise DecodeError(f"file not found: {uri}") from None
    except IsADirectoryError:
        raise DecodeError(f"is a directory, not a file: {uri}") from None
    except PermissionError:
        raise DecodeError(f"permission denied: {uri}") from None
    except DecodeError:
        raise
    except Exception as exc:
        reason = storage_failure(exc, uri)
        if reason is None:
            raise
        raise DecodeError(f"cannot read: {reason.replace('output storage unreachable', 'storage unreachable')}") from None


def read_media(uri: str, endpoint_url: str | None = None) -> bytes:
    with _reading(uri):
        return read_uri(uri, endpoint_url)


def read_head(uri: str, endpoint_url: str | None = None, size: int = 16) -> bytes:
    """The first bytes of a file (to sniff its type)."""
    with _reading(uri), open_uri(uri, endpoint_url) as f:
        return f.read(size)


def sniff_media_type(head: bytes) -> str:
    """'image' when the bytes start like an image format OpenCV reads, else 'video'."""
    if head[:3] == b"\xff\xd8\xff" or head[:8] == b"\x89PNG\r\n\x1a\n" or head[:4] in (b"GIF8", b"II*\x00", b"MM\x00*"):
        return "image"
    if head[:2] == b"BM" or (head[:4] == b"RIFF" and head[8:12] == b"WEBP") or head[:2] in (b"P5", b"P6"):
        return "image"
    return "video"


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG/JPEG/GIF/BMP header without decoding, or None if unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:4] == b"GIF8" and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return abs(w), abs(h)
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            length = struct.unpack(">H", data[i + 2:i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", data[i + 5:i + 9])
                return w, h
            i += 2 + length
    return None


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """RGB uint8 HxWx3 from encoded bytes: EXIF orientation applied; grey, alpha, 16-bit and CMYK converted."""
    if not data:
        raise DecodeError("empty file (0 bytes)")
    size = image_size(data)
    if size is not None:
        w, h = size
        if w * h > max_pixels:
            raise DecodeError(f"image is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
                              "(decompression-bomb guard; raise --max-image-pixels to allow)")
        if min(w, h) < MIN_SIDE:
            raise DecodeError(f"image too small ({w}x{h})")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        kind = "truncated or corrupt image" if size is not None else "not a decodable image"
        raise DecodeError(f"{kind} ({len(data):,} bytes)")
    h, w = bgr.shape[:2]
    if h * w > max_pixels:
        raise DecodeError(f"image is {w}x{h}, over the limit of {max_pixels:,} pixels")
    if min(h, w) < MIN_SIDE:
        raise DecodeError(f"image too small ({w}x{h})")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _open_container(uri: str, endpoint_url: str | None):
    """PyAV container and the file object behind it (None for local paths)."""
    local = _local_path(uri)
    with _reading(uri):
        try:
            if local is not None:
                if os.path.getsize(local) == 0:
                    raise DecodeError("empty file (0 bytes)")
                return av.open(local), None
            fobj = open_uri(uri, endpoint_url)
            return av.open(fobj), fobj
        except av.FFmpegError as exc:
            raise DecodeError(f"cannot open video (truncated, or not a video file): {_ffmpeg_message(exc)}") from None


def estimate_frames(uri: str, endpoint_url: str | None = None) -> int | None:
    """A video's frame count from its container header (no demuxing); None when the header does not tell."""
    container, fobj = _open_container(uri, endpoint_url)
    try:
        if not container.streams.video:
            return None
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        seconds = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else (
            container.duration / av.time_base if container.duration else 0.0)
        rate = stream.average_rate or stream.guessed_rate
        return int(seconds * float(rate)) + 1 if seconds and rate else None
    finally:
        container.close()
        if fobj is not None:
            fobj.close()


def probe_video(uri: str, endpoint_url: str | None = None) -> VideoIndex:
    """Demux the first video stream's packets (no decoding) to list every frame's timestamp."""
    container, fobj = _open_container(uri, endpoint_url)
    try:
        if not container.streams.video:
            raise DecodeError("no video stream in file")
        stream = container.streams.video[0]
        if stream.codec_context is None or stream.codec_context.name is None:
            raise DecodeError("unsupported video codec")
        pts, problem = _demux_timestamps(container, stream)
        if not pts:
            raise DecodeError(f"video stream has no readable frames{f' ({problem})' if problem else ''}")
        tb = stream.time_base or Fraction(1, 1000)
        return VideoIndex(tuple(sorted(set(pts))), Fraction(tb), int(stream.width or 0), int(stream.height or 0),
                          problem)
    finally:
        container.close()
        if fobj is not None:
            fobj.close()


def _demux_timestamps(container, stream) -> tuple[list[int], str]:
    """Every whole packet's timestamp, and why the list may be short ('' when the stream looks complete).

    A cut file shows as a demuxer error, as fewer packets than the container declares, or as
    a last packet marked corrupt (its data is partial: that frame is left out).
    """
    packets: list[tuple[int, bool]] = []
    count, failure = 0, ""
    try:
        for packet in container.demux(stream):
            if packet.size == 0 and packet.dts is None:
                continue                   # the flush packet at the end
            count += 1
            ts = packet.pts if packet.pts is not None else packet.dts
            if packet.size and ts is not None:
                packets.append((int(ts), packet.is_corrupt))
    except av.FFmpegError as exc:
        failure = _ffmpeg_message(exc)
    cut_tail = bool(packets) and packets[-1][1]
    while packets and packets[-1][1]:
        packets.pop()
    pts = [ts for ts, _ in packets]
    declared = stream.frames or 0
    if not (failure or cut_tail or declared > count):
        return pts, ""
    problem = (f"video truncated: {len(pts)} of {declared} frames readable" if declared > len(pts)
               else f"video truncated or corrupt after frame {len(pts)}")
    return pts, problem + (f" ({failure})" if failure else "")


def _ffmpeg_message(exc: av.FFmpegError) -> str:
    """FFmpeg's own words for an error, without the errno and the file name PyAV adds."""
    return str(getattr(exc, "strerror", None) or exc)


def _decode_pass(uri, endpoint_url, seek_pts, wanted: dict[int, int], got: set[int], last: int, fit):
    """One decoding pass; yields (index, rgb, (h, w)), then a final (None, (first_pts, failure_text), None)."""
    container, fobj = _open_container(uri, endpoint_url)
    first_ts, failure = None, "frame not produced by the decoder (truncated or corrupt stream)"
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if seek_pts is not None:
            container.seek(seek_pts, stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            ts = frame.pts if frame.pts is not None else frame.dts
            first_ts = ts if first_ts is None else first_ts
            if ts in wanted and wanted[ts] not in got:
                got.add(wanted[ts])
                h, w = frame.height, frame.width
                if fit is None:
                    yield wanted[ts], frame.to_ndarray(format="rgb24"), (h, w)
                else:  # scale inside swscale, together with the colour conversion: no full-size RGB copy
                    fh, fw = fit(h, w)
                    yield wanted[ts], frame.to_ndarray(width=fw, height=fh, format="rgb24", interpolation="AREA"), (h, w)
            if ts is not None and ts >= last:
                break
    except av.FFmpegError as exc:
        failure = f"video decode stopped: {exc}"
    finally:
        container.close()
        if fobj is not None:
            fobj.close()
    yield None, (first_ts, failure), None


def decode_chunk(uri: str, index: VideoIndex, plan: ChunkPlan, endpoint_url: str | None = None,
                 fit=None) -> Iterator[tuple[int, np.ndarray | DecodeError, tuple[int, int] | None]]:
    """Yield (frame_index, RGB frame or DecodeError, original (h, w)) once for each planned frame of a chunk.

    `fit(h, w) -> (h2, w2)`, if given, is the size the RGB frame is scaled to while converting.

    Seeks to the keyframe before the chunk and decodes forward. If the seek landed past the
    chunk's first frame (some demuxers do), the missing frames are decoded from the start of
    the stream. Frames come in decoding order, which is frame order except after such a retry.
    """
    wanted = {index.pts[i]: i for i in plan.frames}
    last, start = max(wanted), index.pts[plan.frames[0]]
    got: set[int] = set()
    seek: int | None = start if start > index.pts[0] else None
    while True:
        for i, value, shape in _decode_pass(uri, endpoint_url, seek, wanted, got, last, fit):
            if i is None:
                first_ts, failure = value
            else:
                yield i, value, shape
        overshot = seek is not None and (first_ts is None or first_ts > start)
        if len(got) == len(wanted) or not overshot:
            break
        seek = None
    for i in plan.frames:
        if i not in got:
            yield i, DecodeError(failure), None
