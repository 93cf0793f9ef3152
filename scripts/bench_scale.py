#!/usr/bin/env python
"""Scale checks for the performance issue, printed as numbers from one run each.

    python scripts/bench_scale.py plan --rows 1000000
        read + plan a 1,000,000-row manifest, then resume with half of the shards committed:
        seconds and peak RSS of the driver.
    python scripts/bench_scale.py memory --minutes 10 --images 100000
        a long 1080p video (generated with PyAV) and a 100,000-item image manifest through
        `humanseg-batch run` (embedded Ray): peak total RSS of the driver and every Ray process.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_plan(rows: int, shard_size: int) -> dict:
    from humanseg_batch.pipeline.ledger import Ledger
    from humanseg_batch.pipeline.manifest import read_manifest
    from humanseg_batch.pipeline.plan import plan_shards
    from humanseg_batch.pipeline.storage import Storage

    work = Path(tempfile.mkdtemp(prefix="hsb-plan-"))
    manifest = work / "manifest.csv"
    with open(manifest, "w") as f:
        f.write("uri,camera\n")
        for i in range(rows):
            f.write(f"s3://archive/photos/{i // 1000:05d}/{i:08d}.jpg,cam{i % 7}\n")
    t = time.perf_counter()
    m = read_manifest(str(manifest))
    shards = plan_shards(m, shard_size)
    first = time.perf_counter() - t
    out = Storage(str(work / "out"))
    ledger = Ledger(out)
    for shard in shards[: len(shards) // 2]:   # half committed (no rows), as after an interrupted run
        ledger.commit(shard, [], {})
    t = time.perf_counter()
    m = read_manifest(str(manifest))
    pending = Ledger(out, m).plan(shard_size)
    resume = time.perf_counter() - t
    assert [s.name for s in pending] == [s.name for s in shards[len(shards) // 2:]]
    return {"rows": rows, "shards": len(shards), "plan_s": round(first, 2), "resume_s": round(resume, 2),
            "pending_after_resume": len(pending), "driver_peak_rss_mib": round(peak_rss_mib())}


def make_long_video(path: Path, minutes: float, width: int = 1920, height: int = 1080, fps: int = 30) -> None:
    import av
    import numpy as np

    frames = int(minutes * 60 * fps)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.codec_context.gop_size = fps * 2
        s.codec_context.bit_rate = 2_000_000
        base = np.zeros((height, width, 3), np.uint8)
        base[:, :, 1] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
        for i in range(frames):
            img = base.copy()
            x = (i * 7) % (width - 200)
            img[height // 4: 3 * height // 4, x:x + 200] = (200, 150, 120)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def tree_rss_mib(pids: set[int]) -> float:
    import psutil

    total = 0
    for p in psutil.process_iter(["pid", "ppid", "cmdline", "memory_info"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["pid"] in pids or "ray::" in cmd or "raylet" in cmd or "gcs_server" in cmd or "humanseg" in cmd:
            if p.info["memory_info"]:
                total += p.info["memory_info"].rss
    return total / 2**20


def run_and_watch(args: list[str]) -> dict:
    proc = subprocess.Popen(args)
    peak, samples = 0.0, 0
    t = time.time()
    while proc.poll() is None:
        peak = max(peak, tree_rss_mib({proc.pid}))
        samples += 1
        time.sleep(0.5)
    return {"exit": proc.returncode, "seconds": round(time.time() - t, 1), "peak_total_rss_mib": round(peak),
            "samples": samples}


def bench_memory(minutes: float, images: int, weights: str | None) -> dict:
    import cv2
    import numpy as np

    work = Path(tempfile.mkdtemp(prefix="hsb-mem-"))
    exe = str(Path(sys.executable).parent / "humanseg-batch")
    extra = ["--weights", weights] if weights else []
    report = {}
    if minutes:
        video = work / "long1080p.mp4"
        t = time.time()
        make_long_video(video, minutes)
        report["video_encode_s"] = round(time.time() - t, 1)
        (work / "v.csv").write_text(f"uri,id\n{video},long\n")
        report["video"] = run_and_watch([exe, "run", str(work / "v.csv"), "-o", str(work / "out-v"), "--no-progress", *extra])
        report["video"]["frames"] = int(minutes * 60 * 30)
        print(json.dumps({"video": report["video"]}), flush=True)
    if images:
        rng = np.random.default_rng(0)
        files = []
        for k in range(16):   # small files: the check is about the number of items, not their size
            files.append(work / f"img{k}.jpg")
            cv2.imwrite(str(files[-1]), cv2.GaussianBlur(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8), (5, 5), 2))
        with open(work / "i.csv", "w") as f:
            f.write("uri,id\n")
            for i in range(images):
                f.write(f"{files[i % 16]},img-{i}\n")
        report["images"] = run_and_watch([exe, "run", str(work / "i.csv"), "-o", str(work / "out-i"), "--no-progress",
                                          "--shard-size", "1000", *extra])
        report["images"]["items"] = images
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("plan")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--shard-size", type=int, default=64)
    m = sub.add_parser("memory")
    m.add_argument("--minutes", type=float, default=10)
    m.add_argument("--images", type=int, default=100_000)
    m.add_argument("--weights")
    args = ap.parse_args()
    if args.what == "plan":
        print(json.dumps(bench_plan(args.rows, args.shard_size)))
    else:
        print(json.dumps(bench_memory(args.minutes, args.images, args.weights)))


if __name__ == "__main__":
    main()
