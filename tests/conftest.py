"""Shared fixtures. Tests that read ../shared/data skip only when it is absent (CI makes sure it
is present)."""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # transformers must never reach for the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if not torch.cuda.is_available():
    # The Triton kernels run on CPU tensors only under the interpreter, which Triton reads when
    # the kernels are decorated: set it before anything imports xlt_engine.kernels.
    os.environ.setdefault("TRITON_INTERPRET", "1")

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # pytest -n N: N processes share the cores, so each takes its share of them for torch's
    # threads and for the processes the tests start (torchrun workers, the CLI); more threads
    # than cores would make every process wait on the others
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    torch.set_num_threads(_share)
    os.environ["OMP_NUM_THREADS"] = str(_share)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture
def mbert_vocab(shared_data) -> Path:
    return shared_data / "mbert" / "vocab.txt"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line(
        "markers",
        "device: runs on the default device (the GPU where there is one; "
        "benchmarks/gpu_check.sh --only selftrain runs these there)",
    )


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
