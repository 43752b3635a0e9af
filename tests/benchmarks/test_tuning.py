"""benchmarks/tuning.py: the configuration sweep the tuning scripts share, with a stand-in timer
(the real one needs a GPU)."""

from benchmarks.tuning import print_fastest, time_configs


def test_the_sweep_leaves_out_what_will_not_launch_and_lists_the_fastest_first(capsys):
    times = {1: 3.0, 2: 1.0, 4: 2.0}

    def run(cfg):
        if cfg["w"] == 8:
            raise RuntimeError("out of resources")
        return cfg["w"]  # the stand-in timer reads the launch back

    configs = [{"w": w} for w in (1, 2, 4, 8)]
    rows = time_configs(configs, run, lambda c: f"w={c['w']}", timer=times.__getitem__)
    assert rows == [(1.0, {"w": 2}), (2.0, {"w": 4}), (3.0, {"w": 1})]
    assert "w=8: RuntimeError" in capsys.readouterr().out
    now = print_fastest(rows, {"w": 4}, lambda ms: f"{10 / ms:.1f} GB/s", top=2)
    out = capsys.readouterr().out.splitlines()
    assert now == 2.0
    assert out[0].startswith("  {'w': 2}") and "10.0 GB/s" in out[0] and "current" not in out[0]
    assert out[1].endswith("<- current") and out[2] == "  current ({'w': 4}): 2.000 ms"
    assert print_fastest(rows, {"w": 8}, str) is None
