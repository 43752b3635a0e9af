"""The benchmark harnesses behind ``xlt-engine bench`` (``kernels``: the fused kernels against
torch, torch.compile, Hugging Face and Liger), installed with the package so that the command
works wherever it is; the repository's other benchmarks live in ``benchmarks/``."""
