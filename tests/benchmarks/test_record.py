"""Benchmark records: the common head and where a record is appended."""

import json

import torch

from benchmarks import record


def test_environment_and_append(tmp_path, monkeypatch):
    monkeypatch.setattr(record, "RESULTS", tmp_path / "results")
    env = record.environment(torch.device("cpu"), "bench_x.py", ["--device", "cpu", "a b"])
    assert env["command"] == "python -m benchmarks.bench_x --device cpu 'a b'"
    assert env["torch"] == torch.__version__ and env["threads"] == torch.get_num_threads()
    first = record.append("x", torch.device("cpu"), {**env, "rows": [1]})
    again = record.append("x", torch.device("cpu"), {**env, "rows": [2]})
    assert first == again and first.name == f"x_cpu_{env['date'].replace('-', '')}.json"
    lines = [json.loads(x) for x in first.read_text().splitlines()]
    assert [x["rows"] for x in lines] == [[1], [2]]  # appended, one JSON line each
