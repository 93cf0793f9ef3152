"""The `humanseg-batch` command line."""
from __future__ import annotations

import json
import sys
import time

import click

from humanseg_batch.model import CheckpointError
from humanseg_batch.pipeline.checkpoint import RunMismatchError, read_run_record
from humanseg_batch.pipeline.manifest import ManifestError
from humanseg_batch.pipeline.storage import Storage

from .config import RunConfig, build_config
from .runner import EXIT_USAGE, prepare, print_summary

EXIT_CODES_HELP = ("Exit codes: 0 all items ok; 3 finished, some items have status=error; "
                   "4 some shards failed (run `humanseg-batch retry OUT`); 2 usage or input error.")


def run_options(f):
    """Options shared by `run` and `submit` (values left None unless given, so config files can set them)."""
    opts = [
        click.option("--output", "-o", required=True, help="Output folder: a local path or s3://bucket/prefix."),
        click.option("--weights", help="Model checkpoint (.safetensors). Default: the shipped weights."),
        click.option("--batch-size", type=int, help="Frames per model batch [16]."),
        click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
                     help="Inference precision [auto: bf16 on CUDA (fp16 if unsupported), bf16 on CPUs with native "
                          "bf16, else fp32]."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Model device [auto]."),
        click.option("--threshold", type=float, help="Person probability threshold [from the checkpoint]."),
        click.option("--shard-size", type=int, help="Manifest items per shard, the unit of commit and retry [64]."),
        click.option("--images-per-unit", type=int, help="Images decoded by one task [16]."),
        click.option("--video-chunk-seconds", type=float, help="Length of independently decoded video chunks [10]."),
        click.option("--sample-every", type=int, help="Process every Nth video frame [1]."),
        click.option("--sample-fps", type=float, help="Process about this many video frames per second."),
        click.option("--max-image-pixels", type=int, help="Refuse larger images (decompression bombs) [100M]."),
        click.option("--executor", type=click.Choice(["ray", "local"]),
                     help="ray (default): embedded local Ray or --address; local: in-process, no Ray."),
        click.option("--address", help="Ray cluster address (else RAY_ADDRESS, else an embedded local Ray)."),
        click.option("--model-actors", type=int, help="Model actors [one per GPU, else 1]."),
        click.option("--gpus-per-actor", type=float, help="GPUs per model actor, fractions allowed [1]."),
        click.option("--cpus-per-actor", type=float, help="CPUs reserved per model actor [1]."),
        click.option("--decode-tasks", type=int, help="Concurrent decode/write tasks [cluster CPUs]."),
        click.option("--task-retries", type=int, help="Retries of a unit whose worker died [2]."),
        click.option("--endpoint-url", help="S3-compatible endpoint (or HUMANSEG_S3_ENDPOINT_URL)."),
        click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the model."),
        click.option("--progress/--no-progress", default=None, help="Show a progress bar [on]."),
        click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                     help="TOML or JSON file with any of these settings (flags win)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def flags_to_config(manifest: str, config_file: str | None, **flags) -> RunConfig:
    flags["compile"] = flags.pop("compile_", None)
    try:
        return build_config(dict(flags, manifest=manifest), config_file)
    except (ValueError, TypeError) as exc:
        raise click.UsageError(str(exc)) from None


def execute(cfg: RunConfig, overwrite: bool = False) -> int:
    """Run a config with its executor; return the exit code."""
    start = time.time()
    log = lambda msg: click.echo(msg, err=True)  # noqa: E731
    try:
        prep = prepare(cfg, overwrite=overwrite, log=log)
    except (ManifestError, CheckpointError, RunMismatchError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_USAGE
    log(f"{prep.summary.items} item(s) in {len(prep.shards)} shard(s) to process; "
        f"{prep.summary.shards_skipped} shard(s) already committed")
    if prep.shards:
        if cfg.executor == "local":
            from .local import execute_local
            execute_local(prep)
        else:
            from .ray_executor import execute_ray
            execute_ray(prep, log=log)
    prep.summary.seconds = time.time() - start
    print_summary(prep.summary, cfg.output, log=log)
    return prep.summary.exit_code


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="humanseg-batch")
def cli():
    """Person masks for every image and video frame of a large archive.

    \b
    Typical use:
      humanseg-batch run manifest.csv --output s3://bucket/masks
      humanseg-batch status s3://bucket/masks
      humanseg-batch retry s3://bucket/masks
      humanseg-batch query s3://bucket/masks "select * from items where max_person_fraction > 0.3"
    """


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("manifest")
@run_options
@click.option("--overwrite", is_flag=True, help="Delete this tool's results in OUT first and start over.")
def run(manifest, config_file, overwrite, **flags):
    """Segment every image and video frame listed in MANIFEST (CSV, Parquet or JSONL with a `uri` column).

    Rerunning the same command resumes: committed shards are skipped, unfinished ones are
    redone whole. A manifest that gained rows processes only the new ones.
    """
    cfg = flags_to_config(manifest, config_file, **flags)
    sys.exit(execute(cfg, overwrite=overwrite))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
