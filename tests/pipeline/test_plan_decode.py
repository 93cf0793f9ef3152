from fractions import Fraction

import cv2
import numpy as np
import pytest

from humanseg_batch.pipeline.decode import DecodeError, decode_chunk, decode_image, probe_video
from humanseg_batch.pipeline.plan import Sampling, plan_chunks, select_frames

from mediagen import draw_frame, frame_number, make_video


def expected_frames(times: list[float], sampling: Sampling) -> list[int]:
    """The documented sampling, from the times the generator gave its frames: every Nth frame, or the
    first frame of each 1/F-second slot (then every Nth of those)."""
    if sampling.fps is None:
        return list(range(0, len(times), sampling.every))
    slots = [int(t * sampling.fps + 1e-9) for t in times]
    firsts = [i for i in range(len(times)) if i == 0 or slots[i] != slots[i - 1]]
    return firsts[::sampling.every]


def decoded_indices(path, index, chunks):
    """Decode every chunk; each frame must be the picture the generator drew for its index."""
    seen = []
    for plan in chunks:
        got = list(decode_chunk(str(path), index, plan))
        assert all(not isinstance(f, DecodeError) for _, f, _ in got), got
        assert sorted(i for i, _, _ in got) == list(plan.frames)
        assert [frame_number(f) for _, f, _ in got] == [i for i, _, _ in got]
        seen.extend(i for i, _, _ in got)
    return seen


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(every=3), Sampling(fps=4.0), Sampling(fps=3.0, every=2)])
def test_chunks_cover_every_sampled_frame_exactly_once(tmp_path, sampling):
    path = make_video(tmp_path / "v.avi", frames=53, fps=10, gop=7)
    index = probe_video(str(path))
    assert len(index.pts) == 53
    chunks = plan_chunks(index, 1.3, sampling)
    assert len(chunks) > 3
    seen = decoded_indices(path, index, chunks)
    assert seen == expected_frames([i / 10 for i in range(53)], sampling)
    assert len(seen) == len(set(seen))


def test_variable_frame_rate_and_late_start(tmp_path):
    tb = Fraction(1, 1000)
    steps = [33, 33, 100, 10, 250, 40, 40, 500, 33, 33] * 4
    pts = [2500]                             # the stream starts 2.5 s in: first keyframe is late
    for s in steps[:-1]:
        pts.append(pts[-1] + s)
    path = make_video(tmp_path / "vfr.mkv", frames=len(pts), pts_list=pts, time_base=tb, gop=5)
    index = probe_video(str(path))
    assert len(index.pts) == len(pts)
    assert index.seconds(0) == 0.0 and abs(index.seconds(len(pts) - 1) - (pts[-1] - pts[0]) / 1000) < 1e-6
    times = [(p - pts[0]) / 1000 for p in pts]
    for sampling in (Sampling(), Sampling(fps=5.0)):
        chunks = plan_chunks(index, 0.7, sampling)
        seen = decoded_indices(path, index, chunks)
        assert seen == expected_frames(times, sampling) and len(seen) == len(set(seen))
    # fps sampling keeps at most one frame per 1/fps bucket and skips none that open a bucket
    chosen = select_frames(index, Sampling(fps=5.0))
    buckets = [int(index.seconds(i) * 5) for i in chosen]
    assert buckets == sorted(set(buckets))


def test_chunk_frames_are_the_right_frames(tmp_path):
    path = make_video(tmp_path / "v.avi", frames=30, fps=10, gop=8)
    index = probe_video(str(path))
    for plan in plan_chunks(index, 0.9, Sampling()):
        for i, frame, shape in decode_chunk(str(path), index, plan):
            # the whole picture, not just its number: mpeg4 leaves about 8-11 levels of mean error
            assert frame_number(frame) == i and shape == (48, 64)
            assert np.abs(frame.astype(np.int16) - draw_frame(i, 48, 64)).mean() < 16
        small = list(decode_chunk(str(path), index, plan, fit=lambda h, w: (h // 2, w // 2)))
        assert all(f.shape == (24, 32, 3) and shape == (48, 64) for _, f, shape in small)


def test_decode_image_handles_grey_alpha_16bit_and_guards(tmp_path):
    grey = np.full((20, 30), 128, np.uint8)
    rgba = np.zeros((20, 30, 4), np.uint8)
    deep = np.full((20, 30, 3), 40000, np.uint16)
    for arr in (grey, rgba, deep):
        ok, buf = cv2.imencode(".png", arr)
        out = decode_image(buf.tobytes())
        assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    ok, buf = cv2.imencode(".png", np.zeros((40, 40, 3), np.uint8))
    with pytest.raises(DecodeError, match="decompression-bomb"):
        decode_image(buf.tobytes(), max_pixels=1000)
    with pytest.raises(DecodeError, match="empty"):
        decode_image(b"")
    with pytest.raises(DecodeError, match="not a decodable image"):
        decode_image(b"hello, this is text")
