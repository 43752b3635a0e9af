"""The lab's tests use the test suite's set-up (offline transformers, the Triton interpreter on
CPU, thread shares under xdist) and its fixtures."""

from tests.conftest import _seed, mbert_vocab, pytest_configure, shared_data

__all__ = ["_seed", "mbert_vocab", "pytest_configure", "shared_data"]
