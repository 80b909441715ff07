#!/usr/bin/env bash
# Packaging check: build the wheel, install it with [all] into a second, clean virtualenv (torch first,
# the same constraint file as .ci/setup), then run .ci/wheel_smoke.py from a directory outside the
# repository, so nothing can be imported or read from the source tree.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY=${PYTHON:-python3}
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Build from a copy of the sources: a stale build/ or *.egg-info in the checkout (left by an editable
# install) could otherwise put files into the wheel that the sources no longer have.
mkdir -p "$WORK/src"
tar -C "$REPO" --exclude=./.venv --exclude=./.git --exclude=./build --exclude=./dist --exclude=./out \
    --exclude=./runs --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache --exclude=.hypothesis \
    -cf - . | tar -C "$WORK/src" -xf -
"$PY" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --upgrade pip
"$WORK/venv/bin/python" -m pip wheel -q --no-deps -w "$WORK/dist" "$WORK/src"
WHEEL=$(ls "$WORK"/dist/ternary_hf-*.whl)
echo "wheel: $(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) KiB)"
"$WORK/venv/bin/python" -m pip install -q "torch==2.13.0"
"$WORK/venv/bin/python" -m pip install -q -c "$REPO/.ci/constraints.txt" "$WHEEL[all]"

mkdir "$WORK/run" && cd "$WORK/run"
"$WORK/venv/bin/python" "$REPO/.ci/wheel_smoke.py" --repo "$REPO"
