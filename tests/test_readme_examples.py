"""What README.md and docs/*.md show, run as a user would type it.

Every fenced `humanseg-batch ...` command, every fenced SQL example and every inline `select ...` is
extracted and run (a real `humanseg-batch` process, in a fresh folder holding the files the examples
name: manifest.csv, data/, held-out/, out/demo from `make demo`). What cannot run here is marked and
replaced, never silently dropped:

- CLUSTER: `submit --address http://HEAD:8265` needs a Ray cluster; tests/jobs/test_cluster.py submits
  to a real `ray start --head` node.
- S3: `s3://bucket/...` runs for real, against the moto S3 server, in a bucket of its own.
- GPU / TIME: `--device cuda` runs on the CPU, `--epochs N` runs 1 epoch.
- NETWORK: `python model/recipe/fetch_encoder.py` downloads from PyPI; a random MobileNetV2
  encoder file of the same layout stands in.
- Synopses (`query OUT "SQL" [--format ...]`): each option they list must be in the command's --help.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from mediagen import make_image, make_video, read_rows, write_manifest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
CLUSTER = re.compile(r"--address http://HEAD")
SYNOPSIS = re.compile(r"\[--[a-z-]+ [A-Z]|\[--[a-z-]+ [a-z]+\|")     # [--out FILE], [--format table|csv]


def fenced(path: Path) -> list[tuple[str, str]]:
    """(language, body) of each fenced block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", path.read_text(), re.S | re.M)


def commands(body: str) -> list[str]:
    """Shell commands of a block: backslash continuations and quotes spanning lines joined."""
    out, pending = [], ""
    for line in body.splitlines():
        if not pending and out and re.match(r"\s+\[", line):     # a synopsis goes on, indented
            out[-1] += " " + line.strip()
            continue
        if not pending and not re.match(r"(humanseg-batch|python) ", line):
            continue
        pending += line + "\n"
        try:
            shlex.split(pending, comments=True)
        except ValueError:          # an open quote: the command goes on
            continue
        if not line.rstrip().endswith("\\"):
            out.append(pending.replace("\\\n", " ").strip())
            pending = ""
    assert not pending, f"unfinished command in a fenced block: {pending!r}"
    return out


def documented() -> list[tuple[str, int, str, list[str]]]:
    """(file name, block number, language, commands) of every block with a command or SQL."""
    found = []
    for path in DOCS:
        for n, (lang, body) in enumerate(fenced(path)):
            cmds = commands(body)
            if lang == "sql":
                cmds = [f'humanseg-batch query OUT {shlex.quote(body.strip())}']
            if cmds:
                found.append((path.name, n, lang, cmds))
        for sql in re.findall(r"`(select [^`]+)`", path.read_text()):
            if "..." not in sql:           # a fragment of a longer example
                found.append((path.name, -1, "inline sql", [f"humanseg-batch query OUT {shlex.quote(sql)}"]))
    return found


BLOCKS = documented()


def labelled_folder(root: Path, n: int, seed: int) -> None:
    """images/ + masks/: make_image draws an ellipse; its mask is the label."""
    for i in range(n):
        image = make_image(root / "images" / f"p{i}.png", 48, 64, seed + i)
        mask = np.zeros((48, 64), np.uint8)
        cv2.ellipse(mask, (32, 24), (64 // 6, 48 // 3), 0, 0, 360, 255, -1)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        assert image.exists() and cv2.imwrite(str(root / "masks" / f"p{i}.png"), mask)


def fake_imagenet_encoder(path: Path) -> None:
    """The layout fetch_encoder.py writes (every MobileNetV2 encoder tensor), with random values."""
    from safetensors.torch import save_file

    from humanseg_batch.model import build_unet

    model = build_unet(encoder="mobilenetv2", depth=5, base_width=4, input_height=64, input_width=64)
    save_file({k: v for k, v in model.state_dict().items() if k.startswith("encoder.")}, str(path))


def run(cwd: Path, argv: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`make demo`: its recipe lines from the Makefile, run in a folder that has the repository's examples/."""
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert recipe, "no demo target in the Makefile"
    where = tmp_path_factory.mktemp("demo")
    (where / "examples").symlink_to(ROOT / "examples")
    lines = [line.strip() for line in recipe.group(1).splitlines()]
    assert len(lines) == 2 and all("humanseg-batch" in line for line in lines)
    for line in lines:
        argv = shlex.split(line.lstrip("-").replace("$(VENV)/bin/", f"{BIN}/"))
        proc = run(where, argv, timeout=900)
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    return where / "out" / "demo"


def test_make_demo_segments_the_examples(demo):
    rows = read_rows(demo)
    by_id = {}
    for r in rows:
        by_id.setdefault(r["id"], []).append(r)
    assert {k: len(v) for k, v in by_id.items()} == {"astronaut": 1, "grace_hopper": 1, "fruits": 1, "vtest": 795}
    assert all(r["status"] == "ok" for r in rows)
    assert by_id["astronaut"][0]["source"].startswith("scikit-image")     # manifest extras are carried along


def workspace(tmp_path: Path, demo: Path) -> Path:
    """A folder with what the examples name."""
    media = tmp_path / "media"
    rows = [{"uri": str(make_image(media / "a.png", 48, 64, 1).relative_to(tmp_path)), "id": "a"},
            {"uri": str(make_video(media / "v.avi", frames=15, fps=10).relative_to(tmp_path)), "id": "v"}]
    write_manifest(tmp_path / "manifest.csv", rows)
    labelled_folder(tmp_path / "data", 8, seed=10)
    labelled_folder(tmp_path / "held-out", 4, seed=50)
    shutil.copytree(demo, tmp_path / "out" / "demo")
    return tmp_path


def adapt(cmd: str, bucket: str) -> tuple[list[list[str]], str]:
    """The argv lists to run for one documented command, and why it was changed (empty: run as written)."""
    cmd = cmd.replace("s3://bucket/", f"s3://{bucket}/")
    argv = shlex.split(cmd, comments=True)
    argv = ["out/demo" if a == "OUT" else a for a in argv]
    notes = []
    if argv[0] == "python" and argv[1].endswith("fetch_encoder.py"):
        return [], "NETWORK"
    for flag, value, why in (("--device", "cpu", "GPU"), ("--epochs", "1", "TIME")):
        if flag in argv and argv[argv.index(flag) + 1] != value:
            argv[argv.index(flag) + 1] = value
            notes.append(why)
    optional = [a for a in argv if a.startswith("[") and a.endswith("]")]
    plain = [a for a in argv if a not in optional]
    variants = [plain] + ([plain + [a.strip("[]") for a in optional]] if optional else [])
    return [[str(BIN / v[0]), *v[1:]] for v in variants], " ".join(notes)


def check_synopsis(cmd: str) -> None:
    words = shlex.split(cmd)
    proc = run(ROOT, [str(BIN / "humanseg-batch"), words[1], "--help"])
    assert proc.returncode == 0, proc.stderr
    for option in re.findall(r"\[(--[a-z-]+)", cmd):
        assert option in proc.stdout, f"{cmd!r} lists {option}, which `{words[1]} --help` does not know"


@pytest.mark.parametrize("name, block, lang, cmds", BLOCKS, ids=[f"{b[0]}-{b[1]}-{b[2] or 'text'}" for b in BLOCKS])
def test_documented_commands_run(name, block, lang, cmds, demo, tmp_path, s3_bucket):
    fs, bucket = s3_bucket
    where = workspace(tmp_path, demo)
    if any("s3://bucket/" in c for c in cmds) and not any(c.startswith("humanseg-batch run") for c in cmds):
        fs.put(str(demo), f"{bucket}/masks", recursive=True)      # an S3 output for the commands to read
    for cmd in cmds:
        if CLUSTER.search(cmd):
            continue                         # CLUSTER: tests/jobs/test_cluster.py
        if SYNOPSIS.search(cmd):
            check_synopsis(cmd)
            continue
        variants, changed = adapt(cmd, bucket)
        if changed == "NETWORK":
            fake_imagenet_encoder(where / shlex.split(cmd)[shlex.split(cmd).index("--out") + 1])
            continue
        for argv in variants:
            proc = run(where, argv)
            assert proc.returncode == 0, f"{cmd}\n({changed or 'as written'})\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"


def normalise(sql: str) -> str:
    return " ".join(sql.split()).rstrip(";")


def test_readme_sql_is_the_docs_sql():
    docs_sql = {normalise(body) for path in DOCS[1:] for lang, body in fenced(path) if lang == "sql"}
    readme_sql = [shlex.split(c)[3] for _, body in fenced(DOCS[0]) for c in commands(body)
                  if c.startswith("humanseg-batch query")]
    assert readme_sql and all(normalise(s) in docs_sql for s in readme_sql), readme_sql


def test_every_example_is_found():
    # a guard on the extraction itself: the counts of what the documents held when this was written
    sql = [b for b in BLOCKS if b[2] == "sql"]
    assert len(sql) >= 5
    cmds = [c for b in BLOCKS for c in b[3] if c.startswith("humanseg-batch") and b[2] != "sql"]
    assert sum(c.startswith("humanseg-batch query") for c in cmds) >= 4
    assert {shlex.split(c)[1] for c in cmds} >= {"run", "status", "retry", "submit", "train", "eval", "query", "preview"}
