"""The bad-input corpus of issue 4, end to end through the CLI in one run.

Every file is made here. Each case states the status it must get; a bad input becomes a
row with `status = error` and a readable message, never a failed shard.

Truncated videos: the frames the demuxer still finds are processed (ok rows), and one extra
error row with a null frame_index says the video is truncated, so `status` shows it and
`retry --errors` redoes it; frames past the break get no row (their timestamps are unknown).
"""
import json
import struct
import zlib

import av
import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from humanseg_batch.jobs.cli import cli
from humanseg_batch.pipeline.write import read_mask
from mediagen import make_image, make_video, read_rows


# --- media made by hand ---------------------------------------------------------------------

def png_header_only(width: int, height: int) -> bytes:
    """A well-formed PNG whose IHDR claims width x height, with a tiny IDAT: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def cmyk_jpeg(blocks: np.ndarray) -> bytes:
    """A baseline Adobe CMYK JPEG, one flat 8x8 block per entry of `blocks` (rows x cols x 4, uint8).

    Neither OpenCV nor FFmpeg writes CMYK JPEGs, so this encodes DC coefficients only: quantisers
    of 1, a DC Huffman table of 4-bit size codes and an AC table holding just end-of-block ('0').
    """
    def segment(marker: int, payload: bytes) -> bytes:
        return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload

    rows, cols, _ = blocks.shape
    out = b"\xff\xd8" + segment(0xEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 0))   # transform 0: CMYK
    out += segment(0xDB, b"\x00" + b"\x01" * 64)
    out += segment(0xC0, struct.pack(">BHHB", 8, rows * 8, cols * 8, 4)
                   + b"".join(bytes([c, 0x11, 0]) for c in range(1, 5)))
    out += segment(0xC4, b"\x00" + bytes([0, 0, 0, 12] + [0] * 12) + bytes(range(12)))
    out += segment(0xC4, b"\x10" + bytes([1] + [0] * 15) + b"\x00")
    out += segment(0xDA, b"\x04" + b"".join(bytes([c, 0]) for c in range(1, 5)) + bytes([0, 63, 0]))
    bits, prev = [], [0, 0, 0, 0]
    for value in blocks.reshape(-1, 4):
        for k in range(4):
            dc = (int(value[k]) - 128) * 8
            diff, prev[k] = dc - prev[k], dc
            size = abs(diff).bit_length()
            bits.append(format(size, "04b"))
            if size:
                bits.append(format(diff if diff > 0 else diff + (1 << size) - 1, f"0{size}b"))
            bits.append("0")                       # end of block
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    data = bytes(int(stream[i:i + 8], 2) for i in range(0, len(stream), 8))
    return out + data.replace(b"\xff", b"\xff\x00") + b"\xff\xd9"


def remux(src, dst, options: dict) -> None:
    """Copy a file's streams into a new container with muxer options (e.g. moov atom first)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options=options) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)


def audio_only(path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)


def encoded(path, array: np.ndarray, ext: str):
    ok, buf = cv2.imencode(ext, array)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


# --- the corpus ------------------------------------------------------------------------------

def build_corpus(root):
    """Manifest rows and, per id, the expected status and (for errors) a message fragment."""
    root.mkdir()
    rng = np.random.default_rng(4)
    photo = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    jpg = encoded(root / "whole.jpg", photo, ".jpg").read_bytes()
    png = encoded(root / "whole.png", photo, ".png").read_bytes()
    (root / "empty.jpg").write_bytes(b"")
    (root / "trunc.jpg").write_bytes(jpg[: len(jpg) // 2])
    (root / "trunc.png").write_bytes(png[: len(png) // 2])
    (root / "text.jpg").write_text("this is a text file, not a JPEG\n")
    (root / "zero.png").write_bytes(png_header_only(0, 0))
    make_image(root / "one.png", 1, 1)
    (root / "bomb.png").write_bytes(png_header_only(50_000, 50_000))
    encoded(root / "deep16.png", (rng.integers(0, 65535, (30, 40, 3))).astype(np.uint16), ".png")
    encoded(root / "grey16.png", np.full((30, 40), 40000, np.uint16), ".png")
    encoded(root / "grey.jpg", photo[:, :, 0], ".jpg")
    encoded(root / "alpha.png", np.dstack([photo, np.full(photo.shape[:2], 128, np.uint8)]), ".png")
    (root / "cmyk.jpg").write_bytes(cmyk_jpeg(rng.integers(0, 255, (4, 5, 4), dtype=np.uint8)))
    make_image(root / "dir with space" / "ünïcødé 画像 1.png", 30, 44, 7)
    make_video(root / "vidéo clip.mkv", frames=12, fps=10)
    # mp4 from PyAV keeps its moov atom (the index) at the end: cut, it cannot be opened at all
    mp4 = make_video(root / "moov-last.mp4", frames=30, fps=10, gop=5)
    (root / "moov-last-cut.mp4").write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])
    remux(mp4, root / "moov-first.mp4", {"movflags": "faststart"})
    whole = (root / "moov-first.mp4").read_bytes()
    (root / "moov-first-cut.mp4").write_bytes(whole[: len(whole) * 2 // 3])
    avi = make_video(root / "codec.avi", frames=5, fps=10).read_bytes()
    assert avi.count(b"FMP4") == 2                 # the stream header's and the bitmap header's FourCC
    (root / "codec.avi").write_bytes(avi.replace(b"FMP4", b"QQQQ"))
    audio_only(root / "audio.mp4")
    good = make_image(root / "good.png", 40, 50, 1)
    make_image(root / "other.png", 40, 50, 2)

    cases = [  # id, uri (relative to the manifest), expected status, error fragment
        ("missing", "nothing-here.jpg", "error", "file not found"),
        ("empty", "empty.jpg", "error", "empty file"),
        ("trunc-jpg", "trunc.jpg", "error", "truncated"),
        ("trunc-png", "trunc.png", "error", "truncated"),
        ("text-as-jpg", "text.jpg", "error", "not a decodable image"),
        ("zero", "zero.png", "error", "too small"),
        ("one", "one.png", "error", "too small"),
        ("bomb", "bomb.png", "error", "decompression-bomb"),
        ("deep16", "deep16.png", "ok", None),
        ("grey16", "grey16.png", "ok", None),
        ("grey", "grey.jpg", "ok", None),
        ("alpha", "alpha.png", "ok", None),
        ("cmyk", "cmyk.jpg", "ok", None),
        ("unicode", "dir with space/ünïcødé 画像 1.png", "ok", None),
        ("unicode-video", "vidéo clip.mkv", "ok", None),
        ("moov-last-cut", "moov-last-cut.mp4", "error", "cannot open video"),
        ("moov-first-cut", "moov-first-cut.mp4", "partial", "truncated"),
        ("codec", "codec.avi", "error", "unsupported video codec"),
        ("audio", "audio.mp4", "error", "no video stream"),
        ("blank", "", "error", "blank uri"),
        ("whitespace", "   ", "error", "blank uri"),
        ("null-uri", None, "error", "blank uri"),
        ("s3-no-bucket", "s3://", "error", "malformed uri"),
        ("s3-no-key", "s3://bucket-only", "error", "malformed uri"),
        ("colons", "::::", "error", "file not found"),
        ("nul", "good\x00.png", "error", "NUL"),
        ("dup", "good.png", "ok", None),
        ("dup", "other.png", "ignored", None),        # same id again: reported, processed once
        ("dup", "nothing-here.jpg", "ignored", None),
    ]
    rows = [{"id": i, "uri": u, "case": f"{i}:{n}"} for n, (i, u, _, _) in enumerate(cases)]
    expected = {i: (status, fragment) for i, _, status, fragment in cases if status != "ignored"}
    return rows, expected, good


def test_bad_input_corpus_in_one_run(tmp_path, tiny_weights):
    rows, expected, good = build_corpus(tmp_path / "media")
    manifest = tmp_path / "media" / "manifest.jsonl"     # JSON Lines: a uri may hold a NUL byte
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", str(manifest), "-o", str(out), "--weights", tiny_weights,
                                      "--executor", "local", "--shard-size", "8", "--video-chunk-seconds", "1",
                                      "--no-progress"], catch_exceptions=False)
    log = result.output
    assert result.exit_code == 3, log                       # finished, with item errors
    assert "duplicate id" in log and "'dup'" in log
    assert "Traceback" not in log
    assert not list((out / "_shards").glob("*.failed.json"))

    by_id: dict[str, list[dict]] = {}
    for r in read_rows(out):
        by_id.setdefault(r["id"], []).append(r)
    assert set(by_id) == set(expected)
    wrong = []                                             # every mismatch at once, not just the first
    for item_id, (status, fragment) in expected.items():
        got = by_id[item_id]
        if status == "ok" and not all(r["status"] == "ok" and r["error"] is None for r in got):
            wrong.append((item_id, [r["error"] for r in got]))
        elif status == "error":
            message = got[0]["error"] or ""
            readable = "Traceback" not in message and "\n" not in message and len(message) < 300
            if len(got) != 1 or got[0]["status"] != "error" or fragment not in message or not readable:
                wrong.append((item_id, [(r["status"], r["error"]) for r in got]))
    assert not wrong, wrong

    assert by_id["dup"][0]["uri"] == str(good) and len(by_id["dup"]) == 1
    assert (by_id["cmyk"][0]["width"], by_id["cmyk"][0]["height"]) == (40, 32)
    assert (by_id["deep16"][0]["width"], by_id["deep16"][0]["height"]) == (40, 30)
    assert [r["frame_index"] for r in by_id["unicode-video"]] == list(range(12))
    assert by_id["nul"][0]["case"].startswith("nul:")

    # the truncated faststart mp4: frames before the break are ok, then one error row for the video
    cut = by_id["moov-first-cut"]
    ok_frames = [r["frame_index"] for r in cut if r["status"] == "ok"]
    assert 5 <= len(ok_frames) < 30 and ok_frames == list(range(len(ok_frames))), cut
    errors = [r for r in cut if r["status"] == "error"]
    assert len(errors) == 1 and errors[0]["frame_index"] is None and "truncated" in errors[0]["error"], errors
    assert "of 30" in errors[0]["error"]

    keys = [(r["id"], r["frame_index"]) for rows_ in by_id.values() for r in rows_]
    assert len(keys) == len(set(keys))
    for rows_ in by_id.values():
        for r in rows_:
            if r["status"] == "ok":
                mask = read_mask(r["mask_uri"], r["mask_frame"])
                assert mask.shape == (r["height"], r["width"]) and set(np.unique(mask)) <= {0, 255}


@pytest.mark.parametrize("width,height", [(50_000, 50_000), (0, 0), (1, 1)])
def test_header_guard_refuses_before_decoding(width, height, monkeypatch):
    from humanseg_batch.pipeline import decode

    def no_decoding(*args):
        raise AssertionError("the header guard should refuse this image before decoding it")

    monkeypatch.setattr(decode.cv2, "imdecode", no_decoding)
    with pytest.raises(decode.DecodeError, match="decompression-bomb" if width > 1 else "too small"):
        decode.decode_image(png_header_only(width, height))
