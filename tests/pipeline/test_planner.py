"""Streaming planning (pipeline/planner.py) against the rule it must keep: no Ray, no CLI."""
from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from humanseg_batch.pipeline import manifest as manifest_module
from humanseg_batch.pipeline import planner
from humanseg_batch.pipeline.manifest import ManifestReader
from humanseg_batch.pipeline.planner import plan_manifest


def reference(rows: list[tuple[str, str]], size: int, done: set[str] = frozenset(), ends=()) -> list[tuple]:
    """The rule written plainly: ids (id, else uri, else row-N), later duplicates dropped, done ids
    skipped, the rest cut into groups of `size` that never cross a segment end; (name, ids) per shard."""
    seen, kept = set(), []
    for pos, (uri, i) in enumerate(rows):
        key = i.strip() or uri.strip() or f"row-{pos}"
        if key not in seen:
            seen.add(key)
            if key not in done:
                kept.append((pos, key))
    segment = [sum(pos >= e for e in ends) for pos, _ in kept]
    shards, group = [], []
    for k, (pos, key) in enumerate(kept):
        group.append((pos, key))
        if len(group) == size or k + 1 == len(kept) or segment[k + 1] != segment[k]:
            ids = [g[1] for g in group]
            shards.append((f"shard-{group[0][0]:09d}-{hashlib.sha1(chr(10).join(ids).encode()).hexdigest()[:10]}", ids))
            group = []
    return shards


def write_csv(path, rows):
    with open(path, "w") as f:
        f.write("uri,id,note\n")
        for uri, i in rows:
            f.write(f"{uri},{i},n\n")
    return str(path)


def random_rows(n: int, seed: int) -> list[tuple[str, str]]:
    rnd = random.Random(seed)
    rows = []
    for k in range(n):
        r = rnd.random()
        uri = "" if r < 0.03 else f"/d/{rnd.randrange(n // 2)}.jpg"
        ident = "" if r < 0.5 else f"id{rnd.randrange(n)}"       # ids and uris both repeat: duplicates
        rows.append((uri, ident))
    return rows


def state_of(plan) -> dict:
    return {"version": planner.STATE_VERSION, "shard_size": plan.shard_size, "mode": plan.mode, "segments": plan.segments}


def planned(plan) -> list[tuple]:
    return [(s.name, [i.id for i in s.items]) for s in plan.shards(plan.pending(set()))]


@pytest.mark.parametrize("block", [64, 1 << 20])
def test_a_fresh_plan_follows_the_rule_whatever_the_batch_size(tmp_path, monkeypatch, block):
    monkeypatch.setattr(manifest_module, "BLOCK_BYTES", block)      # 64 bytes: a batch every few rows
    rows = random_rows(700, seed=block)
    plan = plan_manifest(ManifestReader(write_csv(tmp_path / "m.csv", rows)), 7, None, set(), set)
    assert planned(plan) == reference(rows, 7)
    assert plan.names == [name for name, _ in reference(rows, 7)]
    assert len(plan.duplicates) == len(rows) - len({i.strip() or u.strip() or f"row-{p}"
                                                    for p, (u, i) in enumerate(rows)})


def test_appended_rows_form_new_shards_and_never_regroup_committed_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest_module, "BLOCK_BYTES", 256)
    rows = random_rows(300, seed=1)
    path = write_csv(tmp_path / "m.csv", rows)
    first = plan_manifest(ManifestReader(path), 8, None, set(), set)
    state = state_of(first)
    committed = set(first.names)
    more = rows + [(f"/new/{k}.jpg", "") for k in range(20)] + [r for r in rows if r[0] or r[1]][:5]  # duplicates
    second = plan_manifest(ManifestReader(write_csv(tmp_path / "m.csv", more)), 8, state, committed, set)
    assert second.mode == "segments" and second.names[: len(first)] == first.names
    assert planned(second)[len(first):] == reference(more, 8, ends=[300])[len(first):]
    new = [(n, ids) for n, ids in planned(second) if n not in committed]
    assert [ids for _, ids in new] == [[f"/new/{k}.jpg" for k in range(8)], [f"/new/{k}.jpg" for k in range(8, 16)],
                                       [f"/new/{k}.jpg" for k in range(16, 20)]]
    assert [s["rows"] for s in second.segments] == [300, 325]


def test_a_manifest_changed_before_its_planned_rows_is_planned_by_ids(tmp_path):
    rows = random_rows(200, seed=2)
    path = write_csv(tmp_path / "m.csv", rows)
    first = plan_manifest(ManifestReader(path), 10, None, set(), set)
    state = state_of(first)
    done_shards = planned(first)[:4]
    done = {i for _, ids in done_shards for i in ids}
    edited = rows[:50] + rows[60:] + [("/late.jpg", "late")]           # ten rows deleted in the middle
    second = plan_manifest(ManifestReader(write_csv(tmp_path / "m.csv", edited)), 10, state,
                           {n for n, _ in done_shards}, lambda: done)
    assert second.mode == "ids" and planned(second) == reference(edited, 10, done)
    assert second.segments == []


def test_duplicates_are_confirmed_by_their_text_not_their_hash(tmp_path, monkeypatch):
    # every row a hash candidate, as if all ids collided: only rows whose text repeats may be dropped
    monkeypatch.setattr(planner.Spill, "candidates", lambda self: np.arange(self.rows))
    original = planner.Spill.add
    monkeypatch.setattr(planner.Spill, "add",
                        lambda self, pos, keys: (setattr(self, "rows", int(pos[-1]) + 1), original(self, pos, keys)))
    rows = random_rows(150, seed=3)
    plan = plan_manifest(ManifestReader(write_csv(tmp_path / "m.csv", rows)), 6, None, set(), set)
    assert planned(plan) == reference(rows, 6)


def test_a_manifest_edited_while_shards_are_read_back_is_refused(tmp_path):
    rows = [(f"/d/{k}.jpg", "") for k in range(30)]
    path = write_csv(tmp_path / "m.csv", rows)
    plan = plan_manifest(ManifestReader(path), 10, None, set(), set)
    write_csv(tmp_path / "m.csv", rows[:12] + [("/other.jpg", "")] + rows[13:])
    with pytest.raises(manifest_module.ManifestError, match="changed while the run was reading it"):
        list(plan.shards(plan.pending(set())))


def test_the_plan_state_round_trips_through_the_output(tmp_path):
    from humanseg_batch.pipeline.storage import Storage
    path = write_csv(tmp_path / "m.csv", [(f"/d/{k}.jpg", "") for k in range(30)])
    plan = plan_manifest(ManifestReader(path), 10, None, set(), set)
    storage = Storage(str(tmp_path / "out"))
    planner.write_plan_state(storage, plan)
    state = planner.read_plan_state(storage)
    assert state["mode"] == "segments" and state["segments"][0]["rows"] == 30
    again = plan_manifest(ManifestReader(path), 10, state, set(plan.names[:1]), set)
    assert again.names == plan.names and again.segments == plan.segments
    assert json.loads((tmp_path / "out" / "_plan.json").read_text())["shard_size"] == 10


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_an_incremental_run_reads_only_the_appended_rows_and_plans_as_a_full_read_would(tmp_path, monkeypatch, kind):
    from humanseg_batch.pipeline.storage import Storage
    monkeypatch.setattr(manifest_module, "BLOCK_BYTES", 200)
    storage, path = Storage(str(tmp_path / "out")), tmp_path / f"m.{kind}"
    write = (lambda rows: write_csv(path, rows)) if kind == "csv" else (lambda rows: write_jsonl(path, rows))
    rows = random_rows(120, seed=4)
    history = []
    for grow in (0, 37, 0, 51):              # a run, rows appended, a rerun with none new, more appended
        rows = rows + random_rows(grow, seed=grow)[: grow // 2] + [(f"/n/{len(rows)}-{k}.jpg", "") for k in range(grow)]
        write(rows)
        state = planner.read_plan_state(storage)
        committed = {n for plan in history for n in plan.names}
        plan = plan_manifest(ManifestReader(str(path)), 9, state, committed, set, storage)
        full = plan_manifest(ManifestReader(str(path)), 9, state, committed, set)   # without OUT: a full read
        assert plan.names == full.names and plan.duplicates.tolist() == full.duplicates.tolist()
        assert plan.segments == full.segments and plan.reader.fingerprint == full.reader.fingerprint
        assert planned(plan) == planned(full) == reference(rows, 9, ends=[s["rows"] for s in plan.segments[:-1]])
        assert (plan.tail is not None) == (grow > 0 and bool(history))  # the prefix was not parsed again
        planner.write_plan_state(storage, plan)
        full.spill and full.spill.close()
        history.append(plan)
    rows[3] = ("/edited.jpg", "edited")      # an edit before the recorded rows: a full read, by ids
    write(rows)
    plan = plan_manifest(ManifestReader(str(path)), 9, planner.read_plan_state(storage),
                         {n for p in history for n in p.names}, lambda: set(), storage)
    assert plan.mode == "ids" and plan.tail is None


def write_jsonl(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps({"uri": u, "id": i, "note": "n"}) + "\n" for u, i in rows)
    return str(path)


MILLION = """
import resource, sys
from humanseg_batch.pipeline.manifest import ManifestReader
from humanseg_batch.pipeline.planner import plan_manifest
limit = int(sys.argv[2]) << 20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
plan = plan_manifest(ManifestReader(sys.argv[1]), 64, None, set(), set)
assert plan.count.sum() == 1_000_000 and len(plan) == 15_625, (plan.count.sum(), len(plan))
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec
print([int(line.split()[1]) // 1024 for line in open("/proc/self/status") if line.startswith("VmHWM")][0])
"""


def test_a_million_row_manifest_plans_under_a_memory_limit(tmp_path):
    path = tmp_path / "big.csv"
    with open(path, "w") as f:
        f.write("uri,camera\n")
        f.writelines(f"s3://archive/photos/{i // 1000:05d}/{i:08d}.jpg,cam{i % 7}\n" for i in range(1_000_000))
    # Linux enforces no limit on resident memory (RLIMIT_RSS is ignored), and the address space is no
    # measure of it: numpy, Arrow and DuckDB reserve 2.4 GB to touch 0.3 GB. So: a hard address-space
    # limit against a runaway, and the child's peak resident set, which the whole-manifest planner put at
    # 1,372 MiB for these rows (scripts/bench_scale.py plan, 2026-12-01) and this one at about 300 MiB
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(MILLION), str(path), "4096"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) < 600, proc.stdout


def test_an_incremental_plan_with_the_manifest_and_the_output_on_s3(s3_bucket, s3_server, tmp_path):
    from humanseg_batch.pipeline.storage import Storage
    fs, bucket = s3_bucket
    storage, uri = Storage(f"s3://{bucket}/out", s3_server), f"s3://{bucket}/m.csv"
    rows = random_rows(90, seed=5)
    fs.pipe_file(f"{bucket}/m.csv", open(write_csv(tmp_path / "m.csv", rows), "rb").read())
    first = plan_manifest(ManifestReader(uri, s3_server), 8, None, set(), set, storage)
    planner.write_plan_state(storage, first)
    rows += [(f"/n/{k}.jpg", "") for k in range(30)] + [r for r in rows if r[1]][:3]
    fs.pipe_file(f"{bucket}/m.csv", open(write_csv(tmp_path / "m.csv", rows), "rb").read())
    second = plan_manifest(ManifestReader(uri, s3_server), 8, planner.read_plan_state(storage), set(first.names), set,
                           storage)
    assert second.tail is not None and second.tail[1] == 90         # only the appended rows were parsed
    assert planned(second) == reference(rows, 8, ends=[90])
    planner.write_plan_state(storage, second)
    assert sorted(fs.ls(f"{bucket}/out/_plan")) == sorted(f"{bucket}/out/_plan/{kind}-{k:05d}.{ext}" for k in (0, 1)
                                                          for kind, ext in (("shards", "npz"), ("ids", "bin")))
