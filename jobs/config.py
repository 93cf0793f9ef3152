"""RunConfig: one frozen dataclass per run, from defaults, then a config file, then CLI flags."""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from humanseg_batch.pipeline.decode import DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class RunConfig:
    manifest: str
    output: str
    weights: str | None = None          # None: the shipped default weights
    batch_size: int = 16
    precision: str = "auto"             # auto | fp32 | bf16 | fp16
    device: str = "auto"                # auto | cpu | cuda
    threshold: float | None = None      # None: the checkpoint's threshold
    shard_size: int = 64                # manifest items per shard (a video counts as one item)
    images_per_unit: int = 16           # images decoded together by one task
    video_chunk_seconds: float = 10.0
    rle: bool = False                   # also write COCO RLE of every mask into the Parquet
    temporal_smoothing: bool = True     # video: each frame's mask also weighs its two neighbours (model/temporal.py)
    sample_every: int = 1               # process every Nth (selected) frame
    sample_fps: float | None = None     # or about this many frames per second
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    executor: str = "auto"              # auto (local for small jobs without a cluster, else ray) | ray | local
    address: str | None = None          # Ray cluster; None: RAY_ADDRESS or an embedded local Ray
    model_actors: int = 0               # 0: one per GPU, or 1 on CPU
    gpus_per_actor: float = 1.0
    cpus_per_actor: float = 1.0
    decode_tasks: int = 0               # concurrent decode/write tasks; 0: from the cluster's CPUs
    task_retries: int = 2               # retries of a unit whose worker died
    endpoint_url: str | None = None     # S3-compatible endpoint
    compile: bool = False               # torch.compile the model in the actors
    progress: bool = True

    # settings that change results: a rerun into the same OUT must keep them
    COMPAT = ("weights_sha256", "threshold", "input_height", "input_width", "shard_size", "images_per_unit",
              "video_chunk_seconds", "sample_every", "sample_fps", "max_image_pixels", "rle", "temporal_smoothing")
    # what a run record written before a setting existed did, so such outputs still resume
    COMPAT_ABSENT = {"temporal_smoothing": False}

    def __post_init__(self) -> None:
        checks = [
            (self.batch_size >= 1, "batch size must be >= 1"),
            (self.precision in ("auto", "fp32", "bf16", "fp16"), "precision must be auto, fp32, bf16 or fp16"),
            (self.shard_size >= 1, "shard size must be >= 1"),
            (self.images_per_unit >= 1, "images per unit must be >= 1"),
            (self.video_chunk_seconds > 0, "video chunk seconds must be > 0"),
            (self.sample_every >= 1, "sample every must be >= 1"),
            (self.sample_fps is None or self.sample_fps > 0, "sample fps must be > 0"),
            (self.threshold is None or 0 < self.threshold < 1, "threshold must be in (0, 1)"),
            (self.executor in ("auto", "ray", "local"), "executor must be auto, ray or local"),
            (self.max_image_pixels > 0, "max image pixels must be > 0"),
            (self.task_retries >= 0, "task retries must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def read_config_file(path: str) -> dict:
    """Settings from a TOML or JSON file; keys are RunConfig fields (dashes allowed)."""
    text = Path(path).read_text()
    raw = json.loads(text) if path.endswith(".json") else tomllib.loads(text)
    raw = raw.get("run", raw)
    out = {k.replace("-", "_"): v for k, v in raw.items()}
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(out) - known)
    if unknown:
        raise ValueError(f"{path}: unknown settings {unknown}; known: {sorted(known)}")
    return out


def build_config(flags: dict, config_file: str | None = None, base: dict | None = None) -> RunConfig:
    """Defaults < base (e.g. a recorded run) < config file < flags that were given (not None)."""
    merged = dict(base or {})
    if config_file:
        merged.update(read_config_file(config_file))
    merged.update({k: v for k, v in flags.items() if v is not None})
    return RunConfig(**merged)
