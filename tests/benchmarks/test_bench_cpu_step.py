"""The CPU step benchmark runs end to end on a tiny model (both steps, the transformers
baseline, the GEMM rate) and counts a step's matrix products as the docstring says."""

import pytest
import torch

from tests.conftest import SHARED_DATA
from tests.engine.conftest import make_tiny


def test_the_benchmark_measures_both_steps_the_baseline_and_the_roofline(tmp_path):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    pytest.importorskip("transformers")
    from benchmarks.bench_cpu_step import main

    model = make_tiny(tmp_path / "tiny")
    args = ["--model", str(model), "--data", str(SHARED_DATA), "--threads", "1",
            "--freeze", "1", "--sentences", "60", "--warmup", "1", "--iters", "2",
            "--variants", "fp32/8,bf16/32,bf16-pure/8", "--hf-attn", "sdpa,eager", "--no-save"]  # fmt: skip
    (record,) = main(args)
    assert record["threads"] == 1 and record["gemm_gflops"]["float32"] > 0
    rows = {(r["who"], r["step"], r["precision"], r["pad_multiple"]): r for r in record["rows"]}
    assert set(rows) == {
        (who, step, p, pad)
        for p, pad in (("fp32", 8), ("bf16", 32))
        for who, step in (("xlt-engine", "finetune"), ("xlt-engine", "soft"),
                          ("transformers (sdpa)", "finetune"), ("transformers (eager)", "finetune"))
    } | {("xlt-engine", step, "bf16-pure", 8) for step in ("finetune", "soft")}  # fmt: skip
    for r in rows.values():
        assert r["tokens_per_s"] > 0 and r["tokens_per_step"] > 0
    ours = rows[("xlt-engine", "finetune", "fp32", 8)]
    assert 0 < ours["roofline_fraction"] < 10  # measured against this machine's GEMM
    pure = rows[("xlt-engine", "finetune", "bf16-pure", 8)]  # against the bf16 GEMM
    gemm = pure["flops_per_step"] / pure["seconds_per_step"] / 1e9 / pure["roofline_fraction"]
    assert gemm == pytest.approx(record["gemm_gflops"]["bfloat16"])


def test_a_steps_matrix_products_are_counted_on_the_padded_batch():
    from benchmarks.bench_cpu_step import step_flops
    from xlt_engine.model import BertConfig

    cfg = BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=3, num_attention_heads=2,
                     intermediate_size=16)  # fmt: skip
    batch = {"input_ids": torch.zeros(2, 5, dtype=torch.long)}
    layer = 2 * 10 * (4 * 64 + 2 * 8 * 16) + 4 * 2 * 25 * 8
    assert step_flops(cfg, batch, trained_layers=2) == layer * 3 + 2 * layer * 2


def test_an_unknown_transformers_attention_is_refused_before_any_run(capsys):
    from benchmarks.bench_cpu_step import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--model", "m", "--data", "d", "--hf-attn", "sdpa,flash"])
    assert "--hf-attn: unknown ['flash']" in capsys.readouterr().err
