"""Fused Triton kernels, each with a pure-torch reference beside it.

- ``fused_mlm_loss``: MLM decoder projection + cross-entropy over masked rows, never holding the
  full ``[N, V]`` logits.
- ``soft_label_mse``: the soft step's ``mean((softmax(z) - p)^2)``, forward and backward fused.
- ``soft_label_kl``: the soft step's distillation loss KL(p || softmax(z)), likewise.
- ``voter_filter``: unanimous, confident pseudo labels from the Voters Module in one pass.
- ``threshold_curve``: accuracy, recall and coverage at K thresholds in one pass.
- ``supcon_loss``: the supervised contrastive loss of Label Alignment (paper 003), never holding
  the eager composition's [B, B] temporaries in the forward.

Dispatch: CUDA tensors use Triton, CPU tensors the reference; ``XLT_KERNELS=triton|torch``
overrides it (Triton on CPU needs ``TRITON_INTERPRET=1`` set before this package is imported).
"""

from xlt_engine.kernels.mlm_loss import fused_mlm_loss, fused_mlm_loss_ref
from xlt_engine.kernels.soft_label_kl import soft_label_kl, soft_label_kl_ref
from xlt_engine.kernels.soft_label_mse import soft_label_mse, soft_label_mse_ref
from xlt_engine.kernels.supcon_loss import supcon_loss, supcon_loss_ref
from xlt_engine.kernels.threshold_curve import ThresholdCurve, threshold_curve, threshold_curve_ref
from xlt_engine.kernels.voter_filter import voter_filter, voter_filter_ref

__all__ = [
    "ThresholdCurve",
    "fused_mlm_loss",
    "fused_mlm_loss_ref",
    "soft_label_kl",
    "soft_label_kl_ref",
    "soft_label_mse",
    "soft_label_mse_ref",
    "supcon_loss",
    "supcon_loss_ref",
    "threshold_curve",
    "threshold_curve_ref",
    "voter_filter",
    "voter_filter_ref",
]
