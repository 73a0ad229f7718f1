#!/usr/bin/env bash
# Fetch, on a machine with pip access, the wheels that the GPU machines' image lacks into .whl/
# (ignored by git; name it in the device tool's `carry`). benchmarks/gpu_check.sh installs them there.
# That image has Python 3.12, torch, numpy, transformers, pyyaml, tqdm, psutil, msgpack, einops and
# ninja, but not xlsr's audio, shard and DeepSpeed dependencies. Versions follow constraints.txt and
# the versions this checkout's .venv resolved.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
rm -rf .whl && mkdir -p .whl
PACKAGES=(soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 webdataset==1.0.2 braceexpand==0.1.7 hjson==3.1.0
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0)
PLATFORMS=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  PLATFORMS+=(--platform "$tag")
done
PIP_CONFIG_FILE=/dev/null "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${PLATFORMS[@]}" -d .whl "${PACKAGES[@]}"
# DeepSpeed ships only a source archive; with DS_BUILD_OPS=0 its wheel is pure Python.
DS_BUILD_OPS=0 PIP_CONFIG_FILE=/dev/null "$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl \
  "deepspeed==$(grep -oP '^deepspeed==\K.*' constraints.txt)"
ls -l .whl && du -sh .whl
