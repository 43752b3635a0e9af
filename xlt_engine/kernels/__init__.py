"""Fused Triton kernels (MLM loss, soft-label MSE, voter filter, threshold curve), each with a
pure-torch reference. Dispatch: CUDA tensors use Triton, CPU tensors the reference;
``XLT_KERNELS=triton|torch`` overrides it. The kernels land in their own issues."""
