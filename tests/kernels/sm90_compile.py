"""Compile every Triton kernel, at the launch configurations the launchers use, for sm_90
(H100/H200) without a GPU: it catches what the interpreter lets through (tl.dot shape and dtype
rules, returns inside loops, shared memory over the limit). Run without TRITON_INTERPRET:

    python tests/kernels/sm90_compile.py
"""

import importlib
import os
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

if os.environ.get("TRITON_INTERPRET"):
    sys.exit("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled")
m, s, v, t = (
    importlib.import_module("xlt_engine.kernels." + n)
    for n in ("mlm_loss", "soft_label_mse", "voter_filter", "threshold_curve")
)


def sig(kernel, types, consts):
    names = kernel.arg_names
    out = {}
    for n in names:
        if n in consts:
            out[n] = "constexpr"
        else:
            out[n] = types.get(n, "i32")
    return out


def build(kernel, types, consts, num_warps=4, num_stages=3):
    src = ASTSource(
        fn=kernel,
        signature=sig(kernel, types, consts),
        constexprs={(kernel.arg_names.index(k),): v for k, v in consts.items()},
    )
    ck = triton.compile(
        src,
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": num_warps, "num_stages": num_stages},
    )
    return ck


def P(d):
    return "*" + d


cases = []
for dt, ieee, blocks in (
    ("bf16", False, m._blocks(False)),
    ("fp32", True, m._blocks(True)),
    ("fp16", False, m._blocks(False)),
):
    bn, bv, bh, w = blocks["fwd"]
    cases.append(
        (
            "mlm fwd " + dt,
            m.fused_mlm_loss_fwd_kernel,
            dict(
                hidden_ptr=P(dt),
                weight_ptr=P(dt),
                bias_ptr=P(dt),
                labels_ptr="*i64",
                rows_ptr="*i32",
                n_valid_ptr="*i32",
                logits_ptr="*fp32",
                part_max_ptr="*fp32",
                part_sum_ptr="*fp32",
                target_ptr="*fp32",
            ),
            dict(HAS_BIAS=True, IEEE=ieee, BLOCK_N=bn, BLOCK_V=bv, BLOCK_H=bh),
            w,
        )
    )
    dn, dv, dh, w2 = blocks["dh"]
    cases.append(
        (
            "mlm dh " + dt,
            m.fused_mlm_loss_dh_kernel,
            dict(
                logits_ptr="*fp32",
                lse_ptr="*fp32",
                weight_ptr=P(dt),
                labels_ptr="*i64",
                rows_ptr="*i32",
                n_valid_ptr="*i32",
                inv_count_ptr="*fp32",
                dh_ptr="*fp32",
            ),
            dict(IEEE=ieee, BLOCK_N=dn, BLOCK_V=dv, BLOCK_H=dh),
            w2,
        )
    )
    wv, wh, wn, w3 = blocks["dw"]
    for acc in (False, True):
        cases.append(
            (
                f"mlm dw {dt} acc={acc}",
                m.fused_mlm_loss_dw_kernel,
                dict(
                    logits_ptr="*fp32",
                    lse_ptr="*fp32",
                    hidden_ptr=P(dt),
                    labels_ptr="*i64",
                    rows_ptr="*i32",
                    n_valid_ptr="*i32",
                    inv_count_ptr="*fp32",
                    dw_ptr="*fp32" if acc else P(dt),
                    db_ptr="*fp32",
                ),
                dict(
                    ACCUMULATE=acc, DW=True, DB=True, IEEE=ieee, BLOCK_N=wn, BLOCK_V=wv, BLOCK_H=wh
                ),
                w3,
            )
        )
cases.append(
    (
        "mlm lse",
        m.fused_mlm_loss_lse_kernel,
        dict(
            part_max_ptr="*fp32",
            part_sum_ptr="*fp32",
            target_ptr="*fp32",
            n_valid_ptr="*i32",
            lse_ptr="*fp32",
            row_loss_ptr="*fp32",
        ),
        dict(BLOCK_N=64, BLOCK_T=64),
        4,
    )
)
for c in (2, 9):
    bc = triton.next_power_of_2(c)
    br = max(16, min(1024, 8192 // bc))
    cases.append(
        (
            f"mse C={c}",
            s.soft_label_mse_fwd_kernel,
            dict(
                z_ptr="*bf16",
                p_ptr="*fp32",
                mask_ptr="*i1",
                scale_ptr="*fp32",
                partial_ptr="*fp32",
                dz_ptr="*bf16",
                dp_ptr="*fp32",
            ),
            dict(HAS_MASK=True, NEED_DZ=True, NEED_DP=True, BLOCK_R=br, BLOCK_C=bc),
            4,
        )
    )
    cases.append(
        (
            f"voters C={c}",
            v.voter_filter_fwd_kernel,
            dict(
                z_ptr="*bf16",
                alpha_ptr="*fp32",
                labels_ptr="*i64",
                conf_ptr="*fp32",
                probs_ptr="*fp32",
            ),
            dict(BLOCK_N=br, BLOCK_C=bc),
            4,
        )
    )
cases.append(
    (
        "threshold",
        t.threshold_curve_kernel,
        dict(
            conf_ptr="*fp32",
            correct_ptr="*i1",
            thr_ptr="*fp32",
            covered_ptr="*i64",
            hits_ptr="*i64",
            n_correct_ptr="*i64",
        ),
        dict(BLOCK_N=256, BLOCK_K=64),
        4,
    )
)
cases.append(
    (
        "threshold fp64",
        t.threshold_curve_kernel,
        dict(
            conf_ptr="*fp64",
            correct_ptr="*i1",
            thr_ptr="*fp64",
            covered_ptr="*i64",
            hits_ptr="*i64",
            n_correct_ptr="*i64",
        ),
        dict(BLOCK_N=256, BLOCK_K=64),
        4,
    )
)
SHARED_LIMIT = 227 * 1024  # H100/H200 shared memory per block

bad = 0
for name, k, types, consts, w in cases:
    try:
        ck = build(k, types, consts, num_warps=w)
        shared = ck.metadata.shared
        if shared > SHARED_LIMIT:
            raise ValueError(f"needs {shared} bytes of shared memory, over {SHARED_LIMIT}")
        print(f"ok   {name:28s} shared={shared}")
    except Exception as e:
        bad += 1
        print(f"FAIL {name}: {type(e).__name__}: {str(e)[:600]}")
sys.exit(1 if bad else 0)
