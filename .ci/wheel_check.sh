#!/usr/bin/env bash
# The wheel as a user installs it: sdist and wheel built from a copy of the working tree, the wheel
# installed into a fresh virtualenv outside the repository (torch pinned by constraints-cpu.txt), then
# `humanseg-batch --version` and a run on examples/ (embedded Ray) from another folder.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/humanseg-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
pip_install() { "$WORK/venv/bin/python" -m pip install -q -c "$REPO/constraints-cpu.txt" "$@"; }

# A copy of what git would commit (tracked + untracked, not ignored), so no build/ or egg-info lands in REPO.
mkdir "$WORK/src"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | tar --null -cf - -T -) | tar -xf - -C "$WORK/src"
# `python -m build` makes the sdist, then the wheel from the sdist: a file missing from the sdist fails here.
"$REPO/.venv/bin/python" -m build --outdir "$WORK/dist" "$WORK/src" > "$WORK/build.log" 2>&1 \
    || { cat "$WORK/build.log"; exit 1; }
ls -l "$WORK"/dist

"$PY" -m venv "$WORK/venv"
pip_install --upgrade pip
pip_install "$WORK"/dist/*.whl
"$WORK/venv/bin/python" "$REPO/.ci/check_torch.py"

mkdir "$WORK/elsewhere" && cd "$WORK/elsewhere"
installed=$("$WORK/venv/bin/python" -c 'import humanseg_batch.jobs.cli as c; print(c.__file__)')
case "$installed" in "$WORK/venv/"*) ;; *) echo "imported from $installed, not the wheel" >&2; exit 1;; esac
"$WORK/venv/bin/humanseg-batch" --version
"$WORK/venv/bin/humanseg-batch" run "$REPO/examples/manifest.csv" --output "$WORK/out"
"$WORK/venv/bin/humanseg-batch" status "$WORK/out"
echo "wheel check: ok"
