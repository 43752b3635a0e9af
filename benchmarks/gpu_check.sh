#!/usr/bin/env bash
# One device-machine call: CUDA tests (model parity, kernels at mBERT shapes), then the encoder
# and kernel benchmarks. Run from the repository root on a CUDA machine with torch, triton and
# transformers installed:
#   bash benchmarks/gpu_check.sh            (results appended under benchmarks/results/)
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python -c "import torch, triton, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'transformers', transformers.__version__)"
python -m pytest -q -m cuda tests -p no:cacheprovider 2>&1 | tail -15
python benchmarks/bench_encoder.py --precision autocast-bf16
python benchmarks/bench_encoder.py --precision bf16
python benchmarks/bench_kernels.py
python benchmarks/bench_btf_step.py --data ../shared/data
python benchmarks/bench_round.py --data ../shared/data
