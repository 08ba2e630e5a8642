#!/usr/bin/env bash
# The wheels bench/gpu_train.sh needs on a lent GPU machine, which has torch, numpy,
# safetensors, tqdm, scikit-image, matplotlib and huggingface-hub 1.33 (enough for
# diffusers; hub 2.x would need httpx2) but fetches nothing: into .whl/
# (git-ignored; the device tool carries it with carry [".whl"]).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux2014_x86_64 -d .whl \
  'pydantic==2.*' pydantic-core annotated-types typing-inspection \
  diffusers regex importlib-metadata zipp filelock fsspec pyyaml \
  packaging requests urllib3 idna certifi charset-normalizer typing-extensions \
  pytest pluggy iniconfig pytest-timeout
du -sh .whl
