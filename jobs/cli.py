"""The `humanseg-batch` command line."""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import shlex
import sys
import time

import click

from humanseg_batch.model import CheckpointError
from humanseg_batch.model.checkpoint import is_model_name, resolve_weights
from humanseg_batch.pipeline.lease import LeaseHeldError
from humanseg_batch.pipeline.lease import holding as holding_lease
from humanseg_batch.pipeline.ledger import RunMismatchError, read_run_record
from humanseg_batch.pipeline.manifest import ManifestError
from humanseg_batch.pipeline.storage import OutputStorageError, Storage

from . import console
from .config import RunConfig, build_config
from .runner import (EXIT_CODES_HELP, EXIT_ITEM_ERRORS, EXIT_OK, EXIT_STORAGE, EXIT_USAGE, WAIT_HELP, prepare,
                     print_summary)

DEBUG_ENV = "HUMANSEG_DEBUG"


def run_options(f):
    """Options shared by `run` and `submit` (values left None unless given, so config files can set them)."""
    opts = [
        click.option("--output", "-o", required=True, help="Output folder: a local path or s3://bucket/prefix."),
        click.option("--weights", help="Model checkpoint (.safetensors), or a shipped model: 'fast' (for CPUs), "
                                       "'quality' (larger input, for GPUs: better masks of small people), or "
                                       "'default': quality when the model runs on CUDA, else fast. [default]"),
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
        click.option("--temporal-smoothing/--no-temporal-smoothing", default=None,
                     help="Video: decide each frame's mask from its probabilities and its two neighbours' (1/4, "
                          "1/2, 1/4): steadier masks, no lag [on]."),
        click.option("--rle/--no-rle", default=None, help="Also store each mask as COCO compressed RLE in the `rle` "
                     "column [off]."),
        click.option("--executor", type=click.Choice(["auto", "ray", "local"]),
                     help="auto (default): local for a small job (up to 1500 frames) without a cluster address, "
                          "else ray; ray: embedded local Ray or --address; local: in-process, no Ray."),
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


def execute(cfg: RunConfig, overwrite: bool = False, observers=(), redo_errors: bool = False,
            wait: bool = False, verify: bool = False) -> int:
    """Run a config with its executor while holding OUT's lease (one writer per output); return the exit code."""
    command = shlex.join(["humanseg-batch", *sys.argv[1:]])[:300]
    try:
        with holding_lease(cfg.output, cfg.endpoint_url, command, wait=wait, log=console.log) as lease:
            lease.storage_failed = (code := _execute(cfg, overwrite, observers, redo_errors, lease, verify)) == EXIT_STORAGE
            return code
    except LeaseHeldError as exc:
        console.log(f"error: {exc}", level="error")
        return EXIT_USAGE


def _execute(cfg: RunConfig, overwrite: bool, observers, redo_errors: bool, lease, verify: bool = False) -> int:
    start = CLI_STARTED if CLI_STARTED else time.time()
    log = console.log
    try:
        prep = prepare(cfg, overwrite=overwrite, log=log, started=start, lease=lease, redo_errors=redo_errors,
                       verify=verify)
    except (ManifestError, CheckpointError, RunMismatchError, ValueError) as exc:
        console.log(f"error: {exc}", level="error")
        return EXIT_USAGE
    log(f"{prep.summary.items} item(s) in {prep.shard_count} shard(s) to process; "
        f"{prep.summary.shards_skipped} shard(s) already committed")
    prep.observers.extend(observers)
    changed = None
    try:
        if prep.shard_count and prep.executor == "local":
            from .local import execute_local
            execute_local(prep)
        elif prep.shard_count:
            from .ray_executor import execute_ray
            execute_ray(prep, log=log)
    except ManifestError as exc:    # the manifest is read again as shards start: it changed under the run
        changed = str(exc)
    prep.summary.count(prep.ledger)
    prep.summary.seconds = time.time() - start
    print_summary(prep.summary, cfg.output, log=log)
    console.summary_line(prep.summary, cfg.output)
    if changed:
        console.log(f"error: {changed}; committed shards are kept", level="error")
        return EXIT_USAGE
    return prep.summary.exit_code


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="humanseg-batch")
@click.option("--debug", is_flag=True, expose_value=False, is_eager=True, envvar=DEBUG_ENV,
              callback=lambda ctx, param, value: os.environ.update({DEBUG_ENV: "1"}) if value else None,
              help="Show the full traceback of a storage failure instead of its one-line reason.")
@console.options
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
@click.option("--wait", is_flag=True, help=WAIT_HELP)
@click.option("--compact", "compact_after", is_flag=True,
              help="Afterwards, merge the committed shard files into parts (`humanseg-batch compact OUT`, default "
                   "target size): for outputs of many thousands of shards. Skipped if the run failed.")
@console.options
def run(manifest, config_file, overwrite, wait, compact_after, **flags):
    """Segment every image and video frame listed in MANIFEST (CSV, Parquet or JSONL with a `uri` column).

    Rerunning the same command resumes: committed shards are skipped, unfinished ones are
    redone whole. A manifest that gained rows processes only the new ones (only they are read
    when the manifest's earlier bytes are unchanged).
    """
    cfg = flags_to_config(manifest, config_file, **flags)
    code = execute(cfg, overwrite=overwrite, wait=wait)
    if compact_after and code in (EXIT_OK, EXIT_ITEM_ERRORS):
        from .compact_cli import DEFAULT_TARGET_BYTES, compact_out
        compacted = compact_out(cfg.output, DEFAULT_TARGET_BYTES, cfg.endpoint_url)
        code = code if compacted == EXIT_OK else compacted
    sys.exit(code)


@cli.command(epilog="Also works: ray job submit --address http://HEAD:8265 -- humanseg-batch run MANIFEST -o OUT ...")
@click.argument("manifest")
@run_options
@click.option("--overwrite", is_flag=True, help="Forwarded to `run`.")
@click.option("--working-dir", type=click.Path(exists=True, file_okay=False),
              help="Upload this folder with the job (runtime_env working_dir), e.g. a checkout of humanseg-batch.")
@click.option("--pip", "pip_packages", multiple=True, help="pip requirement to install for the job (repeatable).")
@click.option("--runtime-env-json", help="A full Ray runtime_env as JSON (merged over the two above).")
@click.option("--wait/--no-wait", default=True, help="Follow the job's logs until it ends [wait].")
def submit(manifest, config_file, overwrite, working_dir, pip_packages, runtime_env_json, wait, **flags):
    """Submit `humanseg-batch run MANIFEST ...` to a Ray cluster as a job (Ray Jobs API).

    --address is the cluster's dashboard, e.g. http://HEAD:8265; every other run option is
    forwarded to the job's `run`. The cluster needs humanseg-batch installed (the container
    image in infra/), or pass --working-dir/--pip to ship it with the job.
    """
    import shlex

    address = flags.pop("address") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise click.UsageError("--address http://HEAD:8265 (or RAY_ADDRESS) is required")
    flags_to_config(manifest, config_file, **dict(flags))   # validate here, before anything is submitted
    # the job runs in another folder: local paths must be absolute
    local = lambda p: p if p is None or "://" in p else os.path.abspath(p)  # noqa: E731
    manifest, config_file = local(manifest), local(config_file)
    weights = flags["weights"]
    if weights is not None and is_model_name(weights):
        try:    # a shipped model's name travels as is (the workers resolve it in their own install): check it here
            resolve_weights(weights)
        except CheckpointError as exc:
            raise click.BadParameter(str(exc), param_hint="--weights") from None
    else:
        weights = local(weights)
    flags["output"], flags["weights"] = local(flags["output"]), weights
    args = ["humanseg-batch", "run", manifest]
    by_name = {p.name: p for p in run.params}
    for name, value in flags.items():
        if value is None:
            continue
        opt = by_name[name]
        if opt.is_flag or isinstance(value, bool):
            args.append(opt.opts[0] if value else opt.secondary_opts[0])
        else:
            args += [opt.opts[-1] if opt.opts[-1].startswith("--") else opt.opts[0], str(value)]
    if config_file:
        args += ["--config", config_file]
    if overwrite:
        args.append("--overwrite")
    env = {}
    if working_dir:
        env["working_dir"] = working_dir
    if pip_packages:
        env["pip"] = list(pip_packages)
    if runtime_env_json:
        env.update(json.loads(runtime_env_json))
    from .ray_jobs import submit_job

    sys.exit(submit_job(address, shlex.join(args), env, wait, log=lambda m: click.echo(m, err=True)))


@cli.command()
@click.argument("output")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--endpoint-url", help="S3-compatible endpoint (or HUMANSEG_S3_ENDPOINT_URL).")
def status(output, as_json, endpoint_url):
    """Show committed / failed / pending shards, row counts, common errors and what to run next."""
    from .status import format_summary, status_exit_code, summarise

    try:
        summary = summarise(output, endpoint_url)
    except FileNotFoundError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))
    sys.exit(status_exit_code(summary))


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("output")
@click.option("--errors", is_flag=True, help="Also re-process items whose rows have status=error "
              "(their shards are redone; rows are replaced, never duplicated).")
@click.option("--executor", type=click.Choice(["auto", "ray", "local"]), help="Override the recorded executor.")
@click.option("--address", help="Ray cluster address.")
@click.option("--endpoint-url", help="S3-compatible endpoint (or HUMANSEG_S3_ENDPOINT_URL).")
@click.option("--batch-size", type=int, help="Override the batch size (does not change results).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Override the model device.")
@click.option("--progress/--no-progress", default=None, help="Show a progress bar.")
@click.option("--wait", is_flag=True, help=WAIT_HELP)
@console.options
def retry(output, errors, wait, **overrides):
    """Re-run the failed, unfinished and damaged shards of OUTPUT with its recorded settings."""
    storage = Storage(output, overrides.get("endpoint_url"))
    record = read_run_record(storage)
    if record is None:
        click.echo(f"error: {output} holds no humanseg-batch run (no _run.json)", err=True)
        sys.exit(EXIT_USAGE)
    known = {f.name for f in dataclasses.fields(RunConfig)}
    base = {k: v for k, v in record["config"].items() if k in known}
    cfg = build_config(overrides, base=base)
    # --errors takes shards back under the lease; retry checks every committed file's size
    sys.exit(execute(cfg, redo_errors=errors, wait=wait, verify=True))


def _register_subcommands() -> None:
    import importlib

    for module, names in ((".query", ["query"]), (".preview", ["preview"]), (".bench", ["bench"]),
                          (".train_cli", ["train", "eval_"]), (".compact_cli", ["compact"])):
        try:
            mod = importlib.import_module(module, __package__)
        except ImportError as exc:  # a stripped-down environment (e.g. a GPU check without duckdb)
            click.echo(f"note: commands from {module[1:]} unavailable: {exc}", err=True)
            continue
        for name in names:
            cli.add_command(getattr(mod, name))


_register_subcommands()
CLI_STARTED: float | None = None


def process_start_time() -> float:
    """When this process started (imports included), where the OS tells; else now."""
    try:
        return os.stat(f"/proc/{os.getpid()}").st_ctime
    except OSError:
        return time.time()


def main() -> None:
    global CLI_STARTED
    CLI_STARTED = process_start_time()
    try:
        cli()
    except OutputStorageError as exc:   # the command's edge: one line and a documented code, not a traceback
        if os.environ.get(DEBUG_ENV):
            raise
        console.log(f"error: {exc}", level="error")
        sys.exit(EXIT_STORAGE)
    finally:
        # Garbage goes now, while every library is whole: a pyarrow dataset scan collected in the
        # interpreter's teardown aborts the process from its threads ("terminate called without an
        # active exception", exit 134: apache/arrow#36389). Then the rest is frozen: the teardown's
        # collections would walk every object made at import (torch's above all), 0.7-1.2 s of a
        # short run on this machine; 0.2 s frozen.
        gc.collect()
        gc.freeze()


if __name__ == "__main__":
    main()
