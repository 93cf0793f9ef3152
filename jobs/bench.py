"""`humanseg-batch bench`: model-only, decode-only and end-to-end rates measured in one run, and their ratios."""
from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import click
import cv2
import numpy as np

from humanseg_batch.model import Segmenter, load_checkpoint
from humanseg_batch.model.preprocess import content_size, letterbox_batch, letterbox_into
from humanseg_batch.pipeline.decode import decode_chunk, decode_image, probe_video
from humanseg_batch.pipeline.plan import Sampling, plan_chunks

from .config import RunConfig

EXAMPLE_VIDEO = Path(__file__).resolve().parent.parent / "examples" / "media" / "vtest.avi"


def rate(frames: int, seconds: list[float]) -> float:
    return frames / statistics.median(seconds) if seconds else 0.0


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def make_images(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """JPEG photos-like test images (noise + shapes), all of one size."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        img = cv2.GaussianBlur(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), (9, 9), 3)
        cv2.ellipse(img, (size[0] // 2, size[1] // 2), (size[0] // 8, size[1] // 3), 0, 0, 360, (180, 140, 120), -1)
        paths.append(folder / f"img{i:05d}.jpg")
        cv2.imwrite(str(paths[-1]), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return paths


def video_frames_letterboxed(video: str, H: int, W: int, limit: int) -> np.ndarray:
    index = probe_video(video)
    plan = plan_chunks(index, 1e9, Sampling())[0]
    frames = []
    for _, rgb, _ in decode_chunk(video, index, plan, fit=lambda h, w: content_size(h, w, H, W)):
        frames.append(rgb)
        if len(frames) >= limit:
            break
    return letterbox_batch(frames, H, W)[0]


def bench_model(weights, device, precision, batch_size, frames: np.ndarray, repeat: int, compile_: bool,
                threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    seg = Segmenter.from_checkpoint(weights, device=device, precision=precision, batch_size=batch_size,
                                    compile=compile_)
    cuda = seg.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seg.infer(frames[:batch_size])                      # warm-up (allocations, kernels, compilation)
    seconds = timed(lambda: seg.infer(frames), repeat)
    out = {"fps": rate(len(frames), seconds), "threads": torch.get_num_threads(), "device": str(seg.device)}
    if cuda:
        out["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["gpu_name"] = torch.cuda.get_device_name()
    return out


def bench_decode_video(video: str, H: int, W: int, repeat: int) -> float:
    index = probe_video(video)
    plan = plan_chunks(index, 1e9, Sampling())[0]
    buf = np.zeros((H, W, 3), np.uint8)

    def once():
        for _, rgb, _ in decode_chunk(video, index, plan, fit=lambda h, w: content_size(h, w, H, W)):
            letterbox_into(buf, rgb)
    return rate(len(plan.frames), timed(once, repeat))


def bench_write_video(frames: np.ndarray, size: tuple[int, int], threshold: float, repeat: int) -> float:
    """Mask finishing + lossless mask video encoding (MaskVideoWriter) for video frames (the CPU work after the model)."""
    from humanseg_batch.model.segmenter import finish_mask
    from humanseg_batch.pipeline.write import MaskVideoWriter

    h, w = size
    H, W = frames.shape[1:3]
    ch, cw = content_size(h, w, H, W)
    probs = frames[:, :, :, 1]           # any uint8 map of the right shape stands in for probabilities

    def once():
        writer = MaskVideoWriter(w, h)
        for p in probs:
            writer.add(finish_mask(p, (ch, cw), (h, w), threshold).mask)
        writer.finish()
    return rate(len(probs), timed(once, repeat))


def bench_decode_images(paths: list[Path], H: int, W: int, repeat: int) -> float:
    buf = np.zeros((H, W, 3), np.uint8)

    def once():
        for p in paths:
            letterbox_into(buf, decode_image(p.read_bytes()))
    return rate(len(paths), timed(once, repeat))


def bench_pipeline(manifest: Path, weights, executor: str, precision: str, batch_size: int, extra: dict) -> dict:
    """One real run into a temp OUT; steady state = frames after the first unit / time after it."""
    from .cli import execute

    out = Path(tempfile.mkdtemp(prefix="hsb-bench-"))
    marks: list[tuple[int, float]] = []
    try:
        cfg = RunConfig(manifest=str(manifest), output=str(out), weights=weights, executor=executor,
                        precision=precision, batch_size=batch_size, progress=False, **extra)
        t0 = time.time()
        execute(cfg, observers=[lambda frames, now: marks.append((frames, now))])
        total = time.time() - t0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    frames = sum(f for f, _ in marks)
    steady = (frames - marks[0][0]) / (marks[-1][1] - marks[0][1]) if len(marks) > 1 else 0.0
    return {"frames": frames, "seconds": total, "overall_fps": frames / total, "steady_fps": steady,
            "first_result_s": marks[0][1] - t0 if marks else None}


@click.command()
@click.option("--weights", help="Checkpoint to measure [shipped weights].")
@click.option("--video", default=str(EXAMPLE_VIDEO), show_default=True, help="Video for decode/model/pipeline.")
@click.option("--video-copies", default=2, show_default=True, help="The video is listed this many times (longer steady state).")
@click.option("--images", default=64, show_default=True, help="Generated JPEGs for the image decode rate (0: none).")
@click.option("--pipeline-images/--no-pipeline-images", default=False, show_default=True,
              help="Also put the generated images into the end-to-end manifest (default: the video only, so the "
                   "ratios compare like with like).")
@click.option("--image-size", default="1024x768", show_default=True, help="WxH of the generated images.")
@click.option("--precision", "precisions", default="fp32", show_default=True, help="Comma list: fp32,bf16,fp16.")
@click.option("--batch-size", "batch_sizes", default="16", show_default=True, help="Comma list of batch sizes.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--executor", type=click.Choice(["ray", "local"]), default="ray", show_default=True)
@click.option("--model-frames", default=256, show_default=True, help="Resident frames for the model-only rate.")
@click.option("--repeat", default=5, show_default=True, help="Repeats for model/decode rates (median).")
@click.option("--skip-pipeline", is_flag=True, help="Only model-only and decode-only rates.")
@click.option("--cpus-per-actor", type=float, help="Forwarded to the pipeline runs.")
@click.option("--decode-tasks", type=int, help="Forwarded to the pipeline runs.")
@click.option("--threads", type=int, help="Model threads for model-only [--cpus-per-actor, i.e. what a CPU "
              "model actor gets; 1 by default]; GPU runs ignore it.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model (model-only and pipeline).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
def bench(weights, video, video_copies, images, image_size, precisions, batch_sizes, device, executor, model_frames,
          repeat, skip_pipeline, cpus_per_actor, decode_tasks, threads, compile_, as_json, pipeline_images):
    """Measure model-only, decode-only and end-to-end frames/s in one run and print their ratios.

    Ratios: pipeline / model-only, and pipeline / min(model, decode). Start-up costs (imports,
    weights load, Ray start) are reported apart from the steady-state rates.
    """
    threads = threads or max(1, int(cpus_per_actor or 1))
    report, weights, c = start_report(weights, device, video, executor, threads)
    work = Path(tempfile.mkdtemp(prefix="hsb-bench-media-"))
    try:
        w, h = (int(v) for v in image_size.lower().split("x"))
        image_paths = make_images(work, images, (w, h)) if images else []
        report["decode"], resident = bench_decode(video, image_paths, c, repeat, model_frames)
        manifest = write_manifest(work, video, video_copies, image_paths if pipeline_images else [])
        if executor == "ray" and not skip_pipeline:
            from .ray_executor import connect
            t = time.perf_counter()
            connect(None, log=lambda m: None)
            report["startup"]["ray_start_s"] = time.perf_counter() - t
        extra = {k: v for k, v in {"cpus_per_actor": cpus_per_actor, "decode_tasks": decode_tasks,
                                   "device": device, "compile": compile_}.items() if v is not None}
        for precision in precisions.split(","):
            for bs in (int(b) for b in batch_sizes.split(",")):
                model = bench_model(weights, device, precision, bs, resident, repeat, compile_, threads)
                run = {"precision": precision, "batch_size": bs, "model_fps": model.pop("fps"), "model": model}
                if not skip_pipeline:
                    run["pipeline"] = bench_pipeline(manifest, weights, executor, precision, bs, extra)
                    add_ratios(run, report["decode"], pipeline_images)
                report["runs"].append(run)
                click.echo(f"bench: {json.dumps(run)}", err=True)   # partial results survive an interrupted run
    finally:
        shutil.rmtree(work, ignore_errors=True)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))


def start_report(weights, device: str, video: str, executor: str, threads: int):
    """The report's start-up times and conditions; returns it, the resolved weights path and the model config."""
    from .cli import process_start_time

    report: dict = {"startup": {"imports_s": time.time() - process_start_time()}, "conditions": {}, "decode": {},
                    "runs": []}
    t = time.perf_counter()
    _, info = load_checkpoint(weights, device)
    report["startup"]["weights_load_s"] = time.perf_counter() - t
    report["conditions"] = {"model": info["config"].tag,
                            "weights": info["path"], "cpu_count": os.cpu_count(), "video": video,
                            "executor": executor, "device": device, "model_threads": threads}
    return report, info["path"], info["config"]    # `default` resolved once, for the device asked for


def bench_decode(video: str, image_paths: list[Path], config, repeat: int, model_frames: int):
    """Decode-only rates (video, images, mask writing) and the resident letterboxed frames for model-only."""
    H, W = config.input_height, config.input_width
    cv2.setNumThreads(1)       # one thread, as in a unit of the pipeline (run_unit)
    d = {"video_fps": bench_decode_video(video, H, W, repeat)}
    if image_paths:
        d["image_fps"] = bench_decode_images(image_paths, H, W, repeat)
    resident = video_frames_letterboxed(video, H, W, model_frames)
    vindex = probe_video(video)
    d["video_write_fps"] = bench_write_video(resident[:200], (vindex.height, vindex.width), config.threshold, repeat)
    d["video_cpu_side_fps"] = 1 / (1 / d["video_fps"] + 1 / d["video_write_fps"])
    d["video_cpu_side_ratio"] = d["video_cpu_side_fps"] / d["video_fps"]    # 1080p target (issue 14): >= 0.67
    return d, resident


def write_manifest(work: Path, video: str, copies: int, image_paths: list[Path]) -> Path:
    rows = [{"uri": video, "id": f"video-{k}"} for k in range(copies)]
    rows += [{"uri": str(p), "id": p.name} for p in image_paths]
    manifest = work / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def add_ratios(run: dict, decode: dict, pipeline_images: bool) -> None:
    """pipeline / model-only, and pipeline / the slowest of model and the CPU side the manifest needs."""
    fps = run["pipeline"]["steady_fps"]
    cpu_side = [decode["video_cpu_side_fps"]] + ([decode["image_fps"]] if pipeline_images and "image_fps" in decode else [])
    slowest = min([run["model_fps"], *cpu_side])
    run["ratio_pipeline_model"] = fps / run["model_fps"]
    run["ratio_pipeline_bottleneck"] = fps / slowest


def format_report(r: dict) -> str:
    lines = [f"model {r['conditions']['model']}  ({r['conditions']['cpu_count']} CPUs, "
             f"executor {r['conditions']['executor']}, device {r['conditions']['device']})",
             "start-up: " + ", ".join(f"{k} {v:.2f}" for k, v in r["startup"].items()),
             "decode-only (one thread; video_cpu_side = decode + mask finishing + mask write): "
             + ", ".join(f"{k} {v:.2f}" if k.endswith("ratio") else f"{k} {v:.0f}" for k, v in r["decode"].items())]
    lines.append(f"{'precision':>9} {'batch':>5} {'model fps':>10} {'pipe fps':>9} {'overall':>8} "
                 f"{'pipe/model':>10} {'pipe/min':>9} {'first s':>8}")
    for run in r["runs"]:
        p = run.get("pipeline")
        tail = (f"{p['steady_fps']:>9.1f} {p['overall_fps']:>8.1f} {run['ratio_pipeline_model']:>10.2f} "
                f"{run['ratio_pipeline_bottleneck']:>9.2f} {p['first_result_s'] or 0:>8.1f}") if p else ""
        lines.append(f"{run['precision']:>9} {run['batch_size']:>5} {run['model_fps']:>10.1f} {tail}")
    return "\n".join(lines)
