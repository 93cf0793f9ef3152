"""The Ray executor: with jobs/ray_jobs.py (the Jobs API client), the only module that imports ray.

    driver ──expand_task (CPU: probe videos, plan chunks)──> units
           ──unit_task (CPU: decode, letterbox, write masks)──> rows ──> commit shard (driver)
                          └── ModelActor.infer (GPU/CPU actor pool, batches across units)

At most `decode_tasks` units are in flight, and each holds at most two batches, so memory
stays bounded whatever the size of the manifest or the length of a video.
"""
from __future__ import annotations

import collections
import logging
import os
import zlib
from dataclasses import dataclass, field

import numpy as np
import ray
import ray._private.ray_constants as ray_constants
from ray.exceptions import RayError

from humanseg_batch.pipeline.batching import BatchingSegmenter
from humanseg_batch.pipeline.ledger import ShardAssembly
from humanseg_batch.pipeline.plan import ImageUnit, Shard, VideoUnit
from humanseg_batch.pipeline.process import UnitContext, expand_shard, run_unit

from .runner import Prepared, progress_bar

LOCAL_IP = "127.0.0.1"
SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"   # "0": Ray's switch for "no multi-node cluster"


def loopback_only() -> None:
    """Keep an embedded Ray on 127.0.0.1: Ray (2.60) turns a loopback node address into the one that
    routes outwards (eth0: gcs_server got --node-ip-address=192.0.2.2) unless told there is no cluster.
    This process read the switch at import; Ray's child processes read it from the environment."""
    os.environ[SINGLE_NODE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def connect(address: str | None, log=print) -> bool:
    """Join a cluster (address or RAY_ADDRESS), else start an embedded local Ray on loopback.

    The embedded Ray has as many CPUs as the machine has cores: the model actors reserve theirs
    and decode tasks use the rest. (Oversubscribing, e.g. 2 decode tasks + the model on 2 cores,
    measured slower: the threads fight for the cores.)
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        info = ray.init(address=address, logging_level="WARNING")
    else:  # no dashboard: it costs seconds of start-up; loopback only
        # Ray (2.60) turns token auth on for a new local cluster and says so on every run: keep it on,
        # drop the notice (a cluster's auth is set where the cluster is made: infra/README.md).
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        loopback_only()
        info = ray.init(_node_ip_address=LOCAL_IP, include_dashboard=False, logging_level="WARNING")
    where = f"cluster {address}" if address else "embedded local Ray"
    dashboard = f"; dashboard http://{info.dashboard_url}" if info.dashboard_url else ""
    job = f"; Ray job {ray.get_runtime_context().get_job_id()}" if address else ""
    log(f"ray: {where}; resources CPU={ray.cluster_resources().get('CPU', 0):g} "
        f"GPU={ray.cluster_resources().get('GPU', 0):g}{dashboard}{job}")
    return True


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
        context = ray.get_runtime_context()
        return {"pid": os.getpid(), "device": str(s.device), "precision": s.precision, "served": self.served,
                "worker": context.get_worker_id(), "node": context.get_node_id()}

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
    return *run_unit(unit, ctx, ActorInference(actors, seed)), ray.get_runtime_context().get_node_id()


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
    # auto with GPUs: the actor's node decides (the Segmenter's rule), and the log says what it chose
    device = cfg.device if cfg.device != "auto" or use_gpu else "cpu"
    return [ModelActor.options(**options).remote(prep.model_path, device, cfg.precision, cfg.batch_size,
                                                 cfg.threshold, cfg.compile, threads) for _ in range(count)]


def execute_ray(prep: Prepared, log=print) -> None:
    cfg = prep.config
    embedded = connect(cfg.address, log)
    try:
        run_on_ray(prep, log)
    finally:
        if embedded:   # stopped while the interpreter is whole, not by an exit hook in its teardown
            ray.shutdown()


def run_on_ray(prep: Prepared, log=print) -> None:
    cfg = prep.config
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
        self.shards = prep.shards          # a stream read from the manifest as shards are started
        self.next_shard = next(self.shards, None)
        self.todo: list[tuple[ShardProgress, object]] = []       # units ready to submit
        self.running: dict = {}                                   # ref -> (kind, progress, unit)
        self.retries = prep.config.task_retries
        self.frames = 0
        self.unit_nodes: collections.Counter = collections.Counter()    # node id -> units it ran
        self.info_refs = [a.describe.remote() for a in actors]   # logged when the actors are up
        self.first_info: list[dict] = []

    def _submit_next(self) -> None:
        # once the output storage failed as a whole, nothing new starts (ledger.broken)
        while len(self.running) < self.cap and (self.todo or self.next_shard) and not self.prep.ledger.broken:
            if self.todo:
                prog, unit = self.todo.pop(0)
                if prog.assembly.failed:
                    continue
                seed = zlib.crc32(describe(unit).encode())
                ref = unit_task.options(max_retries=self.retries).remote(unit, self.ctx_ref, self.actors, seed)
                self.running[ref] = ("unit", prog, unit)
            else:
                prog = ShardProgress(self.prep.assemble(self.next_shard))
                self.next_shard = next(self.shards, None)
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
        if len(self.unit_nodes) > 1:
            self.log(f"work units ran on {len(self.unit_nodes)} node(s): "
                     + ", ".join(f"{n[:8]} {k}" for n, k in self.unit_nodes.most_common()))

    def _log_actor_info(self) -> None:
        if self.info_refs and not ray.wait(self.info_refs, num_returns=len(self.info_refs), timeout=0)[1]:
            info = self.first_info = ray.get(self.info_refs)
            self.info_refs = []
            pids = ", ".join(str(i["pid"]) for i in info)
            nodes = ", ".join(sorted({i["node"][:8] for i in info}))
            self.log(f"model actors: {len(info)} on {info[0]['device']} ({info[0]['precision']}), pid {pids}; "
                     f"node {nodes}")
            if info[0]["device"] == "cpu" and self.prep.config.device == "auto" and ray.cluster_resources().get("GPU"):
                self.log("warning: the model actors hold GPUs but their node's torch sees no CUDA: running on CPU")

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
            rows, stats, node = result
            self.unit_nodes[node] += 1
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
