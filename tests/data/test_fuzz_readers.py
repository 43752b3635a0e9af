"""tools/fuzz_readers.py as a regression test: generated valid files read back exactly and
mutated ones are refused naming file and line, for every line-based reader."""

import random
from collections import Counter

import pytest

from tools.fuzz_readers import READERS, one_case


@pytest.mark.parametrize("reader", sorted(READERS))
def test_no_generated_file_is_misread(tmp_path, reader):
    rng = random.Random(7)
    counts = Counter(one_case(reader, rng, tmp_path) for _ in range(120))
    assert set(counts) <= {"correct read", "clean error"}, counts
    assert counts["correct read"] > 20 and counts["clean error"] > 20, counts
