"""Offsets past 2^31 elements: each kernel is launched on a tensor whose far end lies beyond
2^31 elements (a sparse memory-mapped file, so nothing is allocated), at the place where an int32
product such as ``m * N * C`` or ``row * stride`` would wrap. Run in a subprocess under Triton's
interpreter: a wrapped offset reads outside the mapping and kills the process."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]

PRELUDE = """
import torch
from pathlib import Path
def sparse(path, n, dtype):
    with open(path, "wb") as f:
        f.truncate(n * dtype.itemsize)
    return torch.from_file(str(path), shared=True, size=n, dtype=dtype)
"""

SCRIPTS = {
    # voter 2 starts at 2 * N * C = 2^31 + 32 elements although N * C fits in int32
    "voter_filter": """
from xlt_engine.kernels.voter_filter import voter_filter_fwd_kernel
M, N, C, B = 3, 2**29 + 8, 2, 16
z = sparse(TMP / "z.bin", M * N * C, torch.bfloat16).view(M, N, C)
z[0, :B] = torch.tensor([2.0, 0.0]).bfloat16()
z[1, :B] = torch.tensor([3.0, 0.0]).bfloat16()
z[2, :B] = torch.tensor([0.0, 1.0]).bfloat16()  # the third voter disagrees
labels, conf, probs = torch.empty(B, dtype=torch.int64), torch.empty(B), torch.empty(B, C)
voter_filter_fwd_kernel[(1,)](
    z, torch.zeros(1), labels, conf, probs, M, N, C, N * C, BLOCK_R=B, BLOCK_C=C
)
ref = torch.tensor([[2.0, 0.0], [3.0, 0.0], [0.0, 1.0]]).softmax(-1)
assert (labels == -1).all(), labels
assert torch.allclose(conf, ref.amax(-1).min().expand(B)), conf
assert torch.allclose(probs, ref.mean(0).expand(B, C), atol=1e-6), probs
print("ok")
""",
    "soft_label_mse": """
from xlt_engine.kernels.soft_label_mse import soft_label_mse_fwd_kernel
M, R, C, B = 3, 2**29 + 8, 2, 16
z = sparse(TMP / "z.bin", M * R * C, torch.float16).view(M, R, C)
dz = sparse(TMP / "dz.bin", M * R * C, torch.float16).view(M, R, C)
rows = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]).half()
for m in range(M):
    z[m, :B] = rows[m]
p = torch.full((B, C), 0.5)
partial, dp = torch.empty(1), torch.empty(B, C)
scale = torch.ones(1)
soft_label_mse_fwd_kernel[(1,)](
    z, p, p, scale, partial, dz, dp, M, R, C, R * C,
    HAS_MASK=False, NEED_DZ=True, NEED_DP=True, BLOCK_R=B, BLOCK_C=C,
)
s = rows.float().softmax(-1)
want = B * ((s - 0.5) ** 2).sum()
assert torch.allclose(partial[0], want), (partial, want)
g = 2 * (s - 0.5)
want_dz = s * (g - (g * s).sum(-1, keepdim=True))
for m in range(M):
    assert torch.allclose(dz[m, :B].float(), want_dz[m].expand(B, C), atol=1e-3), m
print("ok")
""",
    "soft_label_kl": """
from xlt_engine.kernels.soft_label_kl import soft_label_kl_fwd_kernel
M, R, C, B = 3, 2**29 + 8, 2, 16
z = sparse(TMP / "z.bin", M * R * C, torch.float16).view(M, R, C)
dz = sparse(TMP / "dz.bin", M * R * C, torch.float16).view(M, R, C)
rows = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]).half()
for m in range(M):
    z[m, :B] = rows[m]
p = torch.full((B, C), 0.5)
partial, scale = torch.empty(1), torch.ones(1)
soft_label_kl_fwd_kernel[(1,)](
    z, p, p, scale, partial, dz, M, R, C, R * C,
    HAS_MASK=False, NEED_DZ=True, BLOCK_R=B, BLOCK_C=C,
)
log_s = rows.float().log_softmax(-1)
want = B * (0.5 * (torch.log(torch.tensor(0.5)) - log_s)).sum()
assert torch.allclose(partial[0], want), (partial, want)
want_dz = log_s.exp() - 0.5
for m in range(M):
    assert torch.allclose(dz[m, :B].float(), want_dz[m].expand(B, C), atol=1e-3), m
print("ok")
""",
    # row 2 of the logits buffer starts at 2 * stride = 2^31 + 128 elements, stride fits int32
    "mlm_rows": """
from xlt_engine.kernels.mlm_loss import mlm_rows_kernel
V, stride = 1000, 2**30 + 64
buf = sparse(TMP / "z.bin", 2 * stride + V, torch.bfloat16)
z = buf.as_strided((3, V), (stride, 1))
g = torch.Generator().manual_seed(0)
logits = torch.randn(3, V, generator=g).bfloat16()
z.copy_(logits)
labels = torch.tensor([5, 7, 999])
loss = torch.empty(3)
inv = torch.full((1,), 0.5)
mlm_rows_kernel[(3,)](
    z, z, labels, inv, loss, V, stride, -100, HAS_BIAS=False, NEED_GRAD=True, BLOCK_V=256
)
x = logits.double()
want = torch.logsumexp(x, -1) - x[[0, 1, 2], labels]
assert torch.allclose(loss.double(), want, atol=1e-5), (loss, want)
grad = (x.softmax(-1) - torch.nn.functional.one_hot(labels, V)) * 0.5
assert torch.allclose(z.double(), grad, atol=2e-3), (z.double() - grad).abs().max()
print("ok")
""",
}


@pytest.mark.parametrize("kernel", sorted(SCRIPTS))
def test_offsets_past_2_to_the_31(kernel, tmp_path):
    code = PRELUDE + f"TMP = Path({str(tmp_path)!r})\n" + textwrap.dedent(SCRIPTS[kernel])
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", (
        f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    )
