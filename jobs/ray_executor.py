"""The Ray executor: the only module of humanseg-batch that imports ray.

    driver ──expand_task (CPU: probe videos, plan chunks)──> units
           ──unit_task (CPU: decode, letterbox, write masks)──> rows ──> commit shard (driver)
                          └── ModelActor.infer (GPU/CPU actor pool, batches across units)

At most `decode_tasks` units are in flight, and each holds at most two batches, so memory
stays bounded whatever the size of the manifest or the length of a video.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
import zlib
from dataclasses import dataclass, field

import numpy as np
import ray
from ray.exceptions import RayError

from humanseg_batch.pipeline.batching import BatchingSegmenter
from humanseg_batch.pipeline.ledger import ShardAssembly
from humanseg_batch.pipeline.plan import ImageUnit, Shard, VideoUnit
from humanseg_batch.pipeline.process import UnitContext, expand_shard, run_unit

from .runner import Prepared, progress_bar

LOCAL_IP = "127.0.0.1"


def connect(address: str | None, log=print) -> None:
    """Join a cluster (address or RAY_ADDRESS), else start an embedded local Ray on loopback.

    The embedded Ray has as many CPUs as the machine has cores: the model actors reserve theirs
    and decode tasks use the rest. (Oversubscribing, e.g. 2 decode tasks + the model on 2 cores,
    measured slower: the threads fight for the cores.)
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        info = ray.init(address=address, logging_level="WARNING")
    else:  # no dashboard: it costs seconds of start-up; loopback only
        # Ray (2.60) turns token auth on for a new local cluster and says so on every run: keep it on,
        # drop the notice (a cluster's auth is set where the cluster is made: infra/README.md).
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        info = ray.init(_node_ip_address=LOCAL_IP, include_dashboard=False, logging_level="WARNING")
    where = f"cluster {address}" if address else "embedded local Ray"
    dashboard = f"; dashboard http://{info.dashboard_url}" if info.dashboard_url else ""
    job = f"; Ray job {ray.get_runtime_context().get_job_id()}" if address else ""
    log(f"ray: {where}; resources CPU={ray.cluster_resources().get('CPU', 0):g} "
        f"GPU={ray.cluster_resources().get('GPU', 0):g}{dashboard}{job}")


@ray.remote(max_restarts=-1, max_task_retries=-1)
class ModelActor:
    """Loads the weights once; a BatchingSegmenter merges concurrent requests into model batches."""

    def __init__(self, model_path, device, precision, batch_size, threshold, compile_, threads):
        import torch
        from humanseg_batch.model import Segmenter

        if threads:
            torch.set_num_threads(threads)
        self.segmenter = Segmenter.from_checkpoint(model_path, device=device, precision=precision,
                                                   batch_size=batch_size, threshold=threshold, compile=compile_)
        self.batcher = BatchingSegmenter(self.segmenter.infer, batch_size)
        self.served = 0     # requests answered by this process (a restarted actor starts again at 0)

    def describe(self) -> dict:
        s = self.segmenter
        return {"pid": os.getpid(), "device": str(s.device), "precision": s.precision, "served": self.served,
                "worker": ray.get_runtime_context().get_worker_id()}

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        probs = await self.batcher.infer(batch)
        self.served += 1
        return probs


class ActorInference:
    """`Inference` over a pool of model actors; a unit spreads its batches over the pool."""

    def __init__(self, actors: list, seed: int):
        self.actors, self.next = actors, seed

    def submit(self, batch: np.ndarray):
        actor = self.actors[self.next % len(self.actors)]
        self.next += 1
        return actor.infer.remote(batch)   # the array is serialised here, so the caller may reuse it

    def result(self, token) -> np.ndarray:
        return ray.get(token)


@ray.remote(num_cpus=1)
def expand_task(shard: Shard, ctx: UnitContext):
    return expand_shard(shard, ctx)


@ray.remote(num_cpus=1)
def unit_task(unit, ctx: UnitContext, actors: list, seed: int):
    return run_unit(unit, ctx, ActorInference(actors, seed))


@dataclass
class ShardProgress:
    """A shard in flight: its assembly, and how much of it the progress bar has been credited."""
    assembly: ShardAssembly
    chunks: dict = field(default_factory=dict)   # video id -> number of chunk units
    counted: float = 0.0                          # items credited to the progress bar

    @property
    def shard(self) -> Shard:
        return self.assembly.shard

    def credit(self, bar, amount: float) -> None:
        self.counted += amount
        bar.update(amount)


def describe(unit) -> str:
    if isinstance(unit, VideoUnit):
        return f"video {unit.item.uri} chunk {unit.plan.chunk}"
    return f"images {unit.items[0].uri}" + (f" (+{len(unit.items) - 1} more)" if len(unit.items) > 1 else "")


def start_actors(prep: Prepared) -> list:
    cfg = prep.config
    gpus = ray.cluster_resources().get("GPU", 0)
    use_gpu = gpus > 0 and cfg.device != "cpu"
    count = cfg.model_actors or (max(1, int(gpus / cfg.gpus_per_actor)) if use_gpu else 1)
    options = {"num_cpus": cfg.cpus_per_actor, "num_gpus": cfg.gpus_per_actor if use_gpu else 0}
    threads = 0 if use_gpu else max(1, int(round(cfg.cpus_per_actor)))
    device = cfg.device if cfg.device != "auto" else ("cuda" if use_gpu else "cpu")
    return [ModelActor.options(**options).remote(prep.model_path, device, cfg.precision, cfg.batch_size,
                                                 cfg.threshold, cfg.compile, threads) for _ in range(count)]


def execute_ray(prep: Prepared, log=print) -> None:
    cfg = prep.config
    connect(cfg.address, log)
    actors = start_actors(prep)
    resources = ray.cluster_resources()
    actor_cpus = len(actors) * cfg.cpus_per_actor
    decode_slots = max(1, int(resources.get("CPU", 1) - actor_cpus))
    # Exactly one task per decode slot. A unit task blocks in ray.get on the model actor, and Ray
    # lends a blocked task's CPU to queued tasks: a queued task then starts in a fresh worker
    # process (imports, ~2 s of CPU) and oversubscribes the cores. Measured: 2 tasks per slot ran
    # vtest at 59-87 frames/s with a new worker per task; 1 per slot reuses the workers.
    in_flight_cap = cfg.decode_tasks or decode_slots
    Scheduler(prep, actors, in_flight_cap, log).run()


class Scheduler:
    """Keeps at most `cap` tasks in flight, commits shards as their last unit lands."""

    def __init__(self, prep: Prepared, actors: list, cap: int, log=print):
        self.prep, self.actors, self.cap, self.log = prep, actors, cap, log
        self.ctx_ref = ray.put(prep.context)
        self.shards = list(prep.shards)
        self.todo: list[tuple[ShardProgress, object]] = []       # units ready to submit
        self.running: dict = {}                                   # ref -> (kind, progress, unit)
        self.retries = prep.config.task_retries
        self.frames = 0
        self.info_refs = [a.describe.remote() for a in actors]   # logged when the actors are up
        self.first_info: list[dict] = []

    def _submit_next(self) -> None:
        # once the output storage failed as a whole, nothing new starts (ledger.broken)
        while len(self.running) < self.cap and (self.todo or self.shards) and not self.prep.ledger.broken:
            if self.todo:
                prog, unit = self.todo.pop(0)
                if prog.assembly.failed:
                    continue
                seed = zlib.crc32(describe(unit).encode())
                ref = unit_task.options(max_retries=self.retries).remote(unit, self.ctx_ref, self.actors, seed)
                self.running[ref] = ("unit", prog, unit)
            else:
                prog = ShardProgress(self.prep.assemble(self.shards.pop(0)))
                ref = expand_task.options(max_retries=self.retries).remote(prog.shard, self.ctx_ref)
                self.running[ref] = ("expand", prog, None)

    def run(self) -> None:
        with progress_bar(self.prep) as bar:
            self._submit_next()
            while self.running:
                ready, _ = ray.wait(list(self.running), num_returns=1, timeout=5.0)
                self._log_actor_info()
                for ref in ready:
                    kind, prog, unit = self.running.pop(ref)
                    try:
                        result = ray.get(ref)
                    except RayError as exc:
                        self._fail(prog, unit, exc, bar)
                        continue
                    self._landed(kind, prog, unit, result, bar)
                self._submit_next()
        self._log_restarts()

    def _log_actor_info(self) -> None:
        if self.info_refs and not ray.wait(self.info_refs, num_returns=len(self.info_refs), timeout=0)[1]:
            info = self.first_info = ray.get(self.info_refs)
            self.info_refs = []
            pids = ", ".join(str(i["pid"]) for i in info)
            self.log(f"model actors: {len(info)} on {info[0]['device']} ({info[0]['precision']}), pid {pids}")

    def _log_restarts(self) -> None:
        """Say which model actors died and were restarted during the run, and what the new process did."""
        try:
            first = self.first_info or ray.get(self.info_refs, timeout=30)
            info = ray.get([a.describe.remote() for a in self.actors], timeout=30)
        except RayError as exc:   # the run's work is done; a pool that does not answer is only reported
            self.log(f"model actors did not answer at the end of the run: {type(exc).__name__}")
            return
        restarted = [i for i, f in zip(info, first) if i["worker"] != f["worker"]]
        if restarted:
            now = ", ".join(f"pid {i['pid']} served {i['served']} request(s)" for i in restarted)
            self.log(f"model actors restarted during the run: {len(restarted)} of {len(info)} (since then: {now})")

    def _landed(self, kind, prog: ShardProgress, unit, result, bar) -> None:
        if prog.assembly.failed:
            return
        if kind == "expand":
            units, rows = result
            for u in units:
                if isinstance(u, VideoUnit):
                    prog.chunks[u.item.id] = prog.chunks.get(u.item.id, 0) + 1
            prog.credit(bar, len(rows))    # items that failed planning are done
            # units go to the front: finishing a shard beats starting new ones (bounded driver memory)
            self.todo[:0] = [(prog, u) for u in units]
            prog.assembly.expanded(units, rows)
        else:
            rows, stats = result
            prog.credit(bar, len(unit.items) if isinstance(unit, ImageUnit) else 1 / prog.chunks[unit.item.id])
            self.frames += stats["frames"]
            bar.set_postfix(frames=self.frames, refresh=False)
            prog.assembly.landed(rows, stats)

    def _fail(self, prog: ShardProgress, unit, exc: Exception, bar) -> None:
        if prog.assembly.failed:
            return
        self.prep.ledger.note_storage_error(getattr(exc, "cause", None) or exc)   # a task's own exception
        where = describe(unit) if unit is not None else "planning"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        prog.assembly.fail(f"{type(exc).__name__} in {where} after {self.retries} retries: {first_line}")
        prog.credit(bar, len(prog.shard.items) - prog.counted)


def submit_job(address: str, entrypoint: str, runtime_env: dict | None, wait: bool, log=print) -> int:
    """Submit `entrypoint` as a Ray job through the Jobs API; optionally follow its logs to the end."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    deadline = time.time() + 120
    while True:
        try:
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env or None)
            break
        except RuntimeError as exc:   # a head that just started has no job agent for a while
            if "No available agent" not in str(exc) or time.time() > deadline:
                raise
            log("the cluster's job agent is not up yet; retrying")
            time.sleep(2)
    log(f"submitted job {job_id} to {address}")
    log(f"  follow:  ray job logs --address {address} --follow {job_id}")
    log(f"  status:  ray job status --address {address} {job_id}")
    if not wait:
        print(job_id)
        return 0

    async def follow() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    try:
        asyncio.run(follow())
    except Exception as exc:  # noqa: BLE001 - log streaming is best effort; the status below decides
        log(f"(log stream ended: {exc})")
    status = client.get_job_status(job_id)
    while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        time.sleep(1)
        status = client.get_job_status(job_id)
    info = client.get_job_info(job_id)
    log(f"job {job_id}: {status.value}" + (f" ({info.message})" if info.message else ""))
    print(job_id)
    return 0 if status == JobStatus.SUCCEEDED else (info.driver_exit_code or 1)
