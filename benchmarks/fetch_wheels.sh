#!/usr/bin/env bash
# The wheels gpu_check.sh installs on the offline GPU machine (python 3.12, x86_64 Linux, torch,
# triton and transformers already there): the test-only packages and the kernel baselines
# (Liger-Kernel, Cut Cross-Entropy), downloaded here into .whl/ (git-ignored), then carried:
#
#   bash benchmarks/fetch_wheels.sh              # -> .whl/ (a few MB)
#   run(carry=[".whl", ".gpu_sample"], command="bash benchmarks/gpu_check.sh --wheels .whl --with liger,cce --data .gpu_sample")
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-.whl}"
mkdir -p "$dest"
# binary wheels for the GPU machine's interpreter, whatever this one is
pip_download() {
  "${PYTHON:-python3}" -m pip download --quiet --dest "$dest" --only-binary=:all: \
    --python-version 3.12 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --platform any "$@"
}
pip_download pytest hypothesis click tokenizers safetensors
pip_download --no-deps liger-kernel cut-cross-entropy
ls -1 "$dest"
du -sh "$dest"
