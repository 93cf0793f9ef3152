#!/usr/bin/env python
"""Scale checks for the performance issue, printed as numbers from one run each.

    python scripts/bench_scale.py plan --rows 1000000,3000000,10000000
        plan each manifest size as `run` does, then resume with half of the shards committed (as
        `run` does: listings, the plan state, the pending set): seconds and the peak RSS of the
        planning process (VmHWM), then the slope and what it gives for 100 M rows.
    python scripts/bench_scale.py memory --minutes 10 --images 100000
        a long 1080p video (generated with PyAV) and a 100,000-item image manifest through
        `humanseg-batch run` (embedded Ray): peak total RSS of the driver and every Ray process.
    python scripts/bench_scale.py output --shards 100000 [--s3]
        a synthetic output of 100,000 committed shards of 64 rows (real Parquet, markers, run record and
        manifest; no media), on local disk or the moto S3 server: `status`, `status --json` and
        `query "select count(*) from frames"` timed (medians) before and after `compact`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_plan(rows: list[int], shard_size: int, resume: bool) -> list[dict]:
    """scripts/bench_plan.py: plan, half committed, resume; each size in child processes."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_plan import bench_plan as run

    return run(rows, shard_size, resume)


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


# ---- `output`: a synthetic output of many committed shards, and the commands users run on it ----------

VIDEO_EVERY = 100          # one shard in this many holds a video item (30 processed frames)
VIDEO_FRAMES = 30
ERROR_RATE = 0.01          # share of image items that are error rows
ERRORS = ("cannot read image: file not found", "cannot decode image: truncated JPEG data",
          "image too large: 26000x18000 pixels (max 178956970)")


def write_synthetic_manifest(path: Path, shards: int, shard_size: int) -> None:
    """uri, id and a camera column; the last item of one shard in VIDEO_EVERY is a video."""
    with open(path, "w") as f:
        f.write("uri,id,camera\n")
        for p in range(shards * shard_size):
            video = p % (shard_size * VIDEO_EVERY) == shard_size - 1
            kind, ext = ("videos", "mp4") if video else ("photos", "jpg")
            f.write(f"s3://archive/{kind}/{p // 1000:05d}/{p:09d}.{ext},item-{p:09d},cam{p % 7}\n")


def synthetic_rows(storage, shard, rng) -> list[dict]:
    """Rows as a run writes them for a shard's items: one per image, one per processed video frame, some errors."""
    from humanseg_batch.pipeline.write import chunk_mask_path, image_mask_path

    base = {"model": "fast", "weights_sha256": "5" * 64, "shard": shard.name, "rle": None}
    rows = []
    for it in shard.items:
        frames = range(VIDEO_FRAMES) if it.media_type == "video" else [None]
        for f in frames:
            row = dict(base, id=it.id, uri=it.uri, media_type=it.media_type, manifest_row=it.position,
                       frame_index=f, timestamp_s=None if f is None else f * 1.0, chunk=0 if f is None else f // 10,
                       mask_frame=None if f is None else f % 10, status="ok", error=None)
            if f is None and rng.random() < ERROR_RATE:
                rows.append(dict(row, status="error", error=rng.choice(ERRORS), width=None, height=None,
                                 mask_uri=None, mask_frame=None, person_fraction=None, bbox=None, confidence=None))
                continue
            w, h = (1920, 1080) if f is not None else rng.choice([(4032, 3024), (3024, 4032), (1600, 1200)])
            fraction = 0.0 if rng.random() < 0.4 else round(rng.betavariate(1.5, 6), 4)
            x0, y0 = rng.randrange(w // 2), rng.randrange(h // 2)
            mask = image_mask_path(it.id) if f is None else chunk_mask_path(it.id, f // 10)
            rows.append(dict(row, width=w, height=h, mask_uri=storage.uri(mask), person_fraction=fraction,
                             bbox=[x0, y0, x0 + w // 4, y0 + h // 3] if fraction else None,
                             confidence=round(rng.uniform(0.8, 0.99), 3)))
    return rows


def plan_like_a_run(storage, manifest: str, shard_size: int):
    """What `run` does before its first unit (jobs/runner.py prepare): plan the manifest, write the run
    record and the plan state; the shards to commit, with their items and extra columns."""
    from humanseg_batch.jobs.config import RunConfig
    from humanseg_batch.jobs.runner import fix_manifest_columns, plan_output, run_record
    from humanseg_batch.pipeline.ledger import Ledger, check_or_write_run_record
    from humanseg_batch.pipeline.manifest import ManifestReader
    from humanseg_batch.pipeline.planner import write_plan_state
    from humanseg_batch.pipeline.process import ModelInfo

    cfg = RunConfig(manifest=manifest, output=storage.root, shard_size=shard_size, endpoint_url=storage.endpoint_url)
    reader = ManifestReader(manifest, storage.endpoint_url)
    ledger = Ledger(storage)
    plan = plan_output(reader, ledger, shard_size, ledger.committed_names())
    fixed = fix_manifest_columns(None, reader, storage.root)
    record = dict(run_record(cfg, ModelInfo("fast", "5" * 64, 256, 256, 0.5, 16), reader.fingerprint),
                  manifest_columns=fixed)
    check_or_write_run_record(storage, record, list(RunConfig.COMPAT), RunConfig.COMPAT_ABSENT)
    write_plan_state(storage, plan)
    return plan.shards(plan.pending(set()))


def commit_all(storage, shards, threads: int) -> int:
    """Commit each shard through the ledger (Parquet, then marker), as a run does, from a thread pool
    (Parquet encoding and writes release the GIL; S3 writes wait on the network); the rows written."""
    import collections
    import random
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from humanseg_batch.pipeline.ledger import Ledger

    local = threading.local()

    def one(shard) -> int:
        if not hasattr(local, "ledger"):
            local.ledger = Ledger(storage)
        rows = synthetic_rows(storage, shard, random.Random(shard.items[0].position))
        local.ledger.commit(shard, rows, {"units": 1, "frames": len(rows), "decode_s": 0.1})
        local.ledger.committed_now.clear()     # a run's summary; 100 k markers here would only cost memory
        return len(rows)

    total, window = 0, collections.deque()
    with ThreadPoolExecutor(threads) as pool:
        for shard in shards:            # the plan streams shards: keep a few per thread in flight, not all
            window.append(pool.submit(one, shard))
            if len(window) >= 8 * threads:
                total += window.popleft().result()
        return total + sum(f.result() for f in window)


def make_synthetic_output(out: str, work: Path, shards: int, shard_size: int, threads: int,
                          endpoint_url: str | None) -> dict:
    """A finished run's output of `shards` committed shards (no media): manifest, run record, plan state,
    Parquet files and markers, all written by the product's own code."""
    from humanseg_batch.pipeline.storage import Storage

    storage = Storage(out, endpoint_url)
    t = time.perf_counter()
    manifest = work / f"{Path(out).name}.csv"
    write_synthetic_manifest(manifest, shards, shard_size)
    uri = str(manifest)
    if not storage.local:     # beside the output, as a user of S3 would keep it
        uri = f"{storage.root.rsplit('/', 1)[0]}/{manifest.name}"
        storage.fs.put_file(str(manifest), uri)
    todo = plan_like_a_run(storage, uri, shard_size)
    plan_s = time.perf_counter() - t
    t = time.perf_counter()
    rows = commit_all(storage, todo, threads)
    commit_s = time.perf_counter() - t
    return {"shards": shards, "rows": rows, "manifest": uri, "manifest_rows": shards * shard_size,
            "threads": threads, "manifest_and_plan_s": round(plan_s, 1), "commit_s": round(commit_s, 1),
            "shards_per_s": round(shards / commit_s), "objects_per_s": round(2 * shards / commit_s)}


def timed_cli(args: list[str], env: dict | None = None) -> dict:
    """Run `humanseg-batch ARGS` as a user would: seconds, exit code, the process's peak RSS, stdout."""
    exe = str(Path(sys.executable).parent / "humanseg-batch")
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        proc = subprocess.Popen([exe, *args], stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)     # this child's own rusage (peak RSS), not all children's
        seconds = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        text, problem = out.read(), err.read()
    # 3: finished, some rows have status=error, as these outputs have. An abort at exit after a complete
    # answer (pyarrow's dataset scan over s3fs, apache/arrow#39162) is counted, not fatal: the bug is reported
    if proc.returncode not in (0, 3) and not (proc.returncode == -6 and text.strip()):
        raise RuntimeError(f"humanseg-batch {' '.join(args)} exited {proc.returncode}:\n{problem[-3000:]}")
    return {"s": seconds, "rc": proc.returncode, "rss": usage.ru_maxrss / 1024, "out": text}


def timed_median(args: list[str], env: dict, repeats: int, cheap_s: float = 20.0) -> tuple[dict, str]:
    """Median seconds of a command, repeated only while one run costs under `cheap_s`; its last stdout."""
    runs = []
    for _ in range(repeats):
        runs.append(timed_cli(args, env))
        if runs[-1]["s"] > cheap_s:
            break
    return {"median_s": round(statistics.median(r["s"] for r in runs), 2), "all_s": [round(r["s"], 2) for r in runs],
            "exit_codes": [r["rc"] for r in runs], "peak_rss_mib": round(max(r["rss"] for r in runs))}, runs[-1]["out"]


def file_counts(storage) -> dict:
    """Files in each folder of OUT's results (compact's part records live in _compacted/)."""
    return {d: len(storage.list(d)) for d in ("metadata", "_shards", "_compacted")}


def measure_readers(storage, env: dict, shards: int, rows: int, repeats: int) -> dict:
    """status, status --json and the count query, timed; their answers checked against what was written."""
    out = storage.root
    report = {"files": file_counts(storage)}
    report["status"], _ = timed_median(["status", out], env, repeats)
    report["status_json"], text = timed_median(["status", out, "--json"], env, repeats)
    s = json.loads(text)
    got = (s["shards"]["committed"], s["shards"]["pending"], s["rows"]["ok"] + s["rows"]["error"], s["damaged_shards"])
    if got != (shards, 0, rows, {}):
        raise AssertionError(f"status says (committed, pending, rows, damaged) = {got}, expected {shards}, 0, {rows}")
    report["query_count"], text = timed_median(["query", out, "select count(*) from frames"], env, repeats)
    if str(rows) not in text.split():
        raise AssertionError(f"query counted {text!r}, expected {rows} rows")
    return report


def compact_available() -> bool:
    exe = str(Path(sys.executable).parent / "humanseg-batch")
    return subprocess.run([exe, "compact", "--help"], capture_output=True).returncode == 0


def start_s3(endpoint_url: str | None, work: Path):
    """The moto S3 server on 127.0.0.1 (tests/conftest.py starts it the same way), or the one given."""
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    os.environ.pop("AWS_PROFILE", None)
    if endpoint_url:
        return None, endpoint_url
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from conftest import start_moto

    return start_moto(work / "moto.log")


def generate(out: str, work: Path, shards: int, shard_size: int, threads: int, endpoint_url: str | None,
             max_minutes: float) -> dict:
    """The synthetic output, with fewer shards if the storage is too slow to write them in `max_minutes`
    (the rate measured on a probe output of 200 shards, deleted after)."""
    from humanseg_batch.pipeline.storage import Storage

    probe = make_synthetic_output(f"{out}-probe", work, min(shards, 200), shard_size, threads, endpoint_url)
    Storage(f"{out}-probe", endpoint_url).fs.rm(Storage(f"{out}-probe", endpoint_url).path, recursive=True)
    fits = max(probe["shards"], int(probe["shards_per_s"] * max_minutes * 60))
    report = make_synthetic_output(out, work, min(shards, fits), shard_size, threads, endpoint_url)
    report["shards_requested"] = shards
    if fits < shards:
        report["note"] = (f"{shards} shards would take {shards / probe['shards_per_s'] / 60:.0f} min at the measured "
                          f"{probe['shards_per_s']} shards/s; {fits} were written (--max-minutes {max_minutes})")
    return report


def compact_and_measure(report: dict, storage, env: dict, repeats: int, compact_args: tuple[str, ...]) -> dict:
    """The readers timed before `compact`, then compact (twice: a rerun must be a no-op) and after."""
    out, n, rows = storage.root, report["generate"]["shards"], report["generate"]["rows"]
    report["before"] = measure_readers(storage, env, n, rows, repeats)
    print(json.dumps(report), file=sys.stderr, flush=True)     # the slow half is on record if compact fails
    if not compact_available():
        report["after"] = "humanseg-batch has no compact command yet"
        return report
    report["compact_s"] = round(timed_cli(["compact", out, *compact_args], env)["s"], 1)
    report["compact_again_s"] = round(timed_cli(["compact", out, *compact_args], env)["s"], 1)
    report["after"] = measure_readers(storage, env, n, rows, repeats)
    report["ratio_before_after"] = {k: round(report["before"][k]["median_s"] / report["after"][k]["median_s"], 1)
                                    for k in ("status", "status_json", "query_count")}
    return report


def bench_output(shards: int, shard_size: int, s3: bool, threads: int, repeats: int, max_minutes: float,
                 endpoint_url: str | None = None, compact_args: tuple[str, ...] = (), reuse: str | None = None) -> dict:
    """Build a synthetic output of committed shards (or `reuse` the folder of an earlier local one, not yet
    compacted), then time status / query before and after `compact`."""
    from humanseg_batch.pipeline.storage import Storage

    work = Path(reuse or tempfile.mkdtemp(prefix="hsb-out-"))
    server = None
    try:
        bucket = f"bench-{os.getpid()}"
        if s3:
            server, endpoint_url = start_s3(endpoint_url, work)
            Storage(f"s3://{bucket}", endpoint_url).fs.mkdir(bucket)
        out = f"s3://{bucket}/out" if s3 else str(work / "out")
        env = dict(os.environ, **({"HUMANSEG_S3_ENDPOINT_URL": endpoint_url} if s3 else {}))
        report = {"where": f"moto S3 server {endpoint_url}" if s3 else "local disk", "output": out}
        if reuse:
            report["generate"] = json.loads((work / "generate.json").read_text())
        else:
            report["generate"] = generate(out, work, shards, shard_size, threads, endpoint_url, max_minutes)
            (work / "generate.json").write_text(json.dumps(report["generate"]))
        print(json.dumps(report), file=sys.stderr, flush=True)
        return compact_and_measure(report, Storage(out, endpoint_url), env, repeats, compact_args)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("plan")
    p.add_argument("--rows", default="1000000", help="comma-separated manifest sizes")
    p.add_argument("--no-resume", action="store_true", help="plan only (no half-committed output, no resume)")
    p.add_argument("--shard-size", type=int, default=64)
    m = sub.add_parser("memory")
    m.add_argument("--minutes", type=float, default=10)
    m.add_argument("--images", type=int, default=100_000)
    m.add_argument("--weights")
    o = sub.add_parser("output")
    o.add_argument("--shards", type=int, default=100_000)
    o.add_argument("--shard-size", type=int, default=64, help="items per shard (one row each; a video: 30)")
    o.add_argument("--s3", action="store_true", help="on the moto S3 server (started on 127.0.0.1)")
    o.add_argument("--endpoint-url", help="with --s3: an S3 server already running, instead of moto")
    o.add_argument("--threads", type=int, help="commit threads [local: 2, S3: 16]")
    o.add_argument("--repeats", type=int, default=3, help="runs of each command (one if a run takes > 20 s)")
    o.add_argument("--max-minutes", type=float, default=6.0, help="fewer shards if writing them would take longer")
    o.add_argument("--compact-arg", action="append", default=[], help="extra argument of `compact` (repeatable)")
    o.add_argument("--reuse", metavar="DIR", help="the work folder of an earlier local run whose output was not "
                                                   "compacted yet (its generate.json): time it, without writing again")
    args = ap.parse_args()
    if args.what == "plan":
        bench_plan([int(r) for r in args.rows.split(",")], args.shard_size, not args.no_resume)   # a JSON line a size
    elif args.what == "output":
        threads = args.threads or (16 if args.s3 else 2)
        print(json.dumps(bench_output(args.shards, args.shard_size, args.s3, threads, args.repeats, args.max_minutes,
                                      args.endpoint_url, tuple(args.compact_arg), args.reuse)))
    else:
        print(json.dumps(bench_memory(args.minutes, args.images, args.weights)))


if __name__ == "__main__":
    main()
