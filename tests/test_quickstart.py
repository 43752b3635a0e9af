"""The quickstart: its generated task has the promised properties, and the command runs the whole
pipeline from nothing (no ../shared, no download) and prints the table."""

import json
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from xlt_engine.cli import main
from xlt_engine.data import read_conll
from xlt_engine.data.tokenizer import load_tokenizer
from xlt_engine.quickstart import Sizes, build_vocab, default_config, generate, learn_wordpieces

ROOT = Path(__file__).resolve().parents[1]


def _split(path: Path):
    """(plain words, entity names, digits) of a generated file."""
    words, names, digits = set(), set(), set()
    for s in read_conll(path):
        for w, t in zip(s.tokens, s.tags, strict=True):
            (digits if w.isdigit() else names if t != "O" else words).add(w)
    return words, names, digits


def test_generator_is_a_function_of_the_seed(tmp_path):
    a = generate(tmp_path / "a", seed=7, sizes=Sizes(train=50, dev=10, test=20))
    b = generate(tmp_path / "b", seed=7, sizes=Sizes(train=50, dev=10, test=20))
    c = generate(tmp_path / "c", seed=8, sizes=Sizes(train=50, dev=10, test=20))
    assert sorted(a) == ["src.dev", "src.test", "src.train", "tgt.test", "tgt.train"]
    assert all(a[k].read_bytes() == b[k].read_bytes() for k in a)
    assert a["src.train"].read_bytes() != c["src.train"].read_bytes()


def test_languages_differ_in_lexicon_and_share_names_and_digits(tmp_path):
    f = generate(tmp_path, seed=1)
    src_words, src_names, src_digits = _split(f["src.train"])
    tgt_words, tgt_names, tgt_digits = _split(f["tgt.train"])
    assert len(src_words) > 100 and len(tgt_words) > 100
    # own lexicons: only a few short words collide by chance (as false friends do)
    assert len(src_words & tgt_words) < 0.1 * min(len(src_words), len(tgt_words))
    assert len(src_names & tgt_names) > 0.8 * len(tgt_names)  # the same names
    assert src_digits & tgt_digits
    # a part of the names occurs in the test files only
    test_names = _split(f["tgt.test"])[1] | _split(f["src.test"])[1]
    assert test_names - src_names - tgt_names
    # IOB2 tags of three entity types
    tags = {t for s in read_conll(f["src.train"]) for t in s.tags}
    assert tags == {"O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"}
    # no parallel data: the two training files share no sentence skeleton by construction,
    # and their sentence counts are the same only because the sizes say so
    assert len(read_conll(f["src.train"])) == len(read_conll(f["tgt.train"])) == Sizes().train


def test_vocabulary_is_wordpiece_with_the_bert_specials(tmp_path):
    f = generate(tmp_path, seed=1, sizes=Sizes(train=100, dev=10, test=10))
    vocab = build_vocab([f["src.train"], f["tgt.train"]], tmp_path / "vocab.txt", 400)
    lines = vocab.read_text().splitlines()
    assert lines[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(lines) <= 400 and any(x.startswith("##") for x in lines)


def test_vocabulary_is_a_function_of_the_text(tmp_path):
    # the tokenizers WordPiece trainer gave another vocabulary on every run (ties broken by
    # hash-map order), and with it other numbers for one quickstart seed
    f = generate(tmp_path, seed=3, sizes=Sizes(train=200, dev=10, test=10))
    texts = [f["src.train"], f["tgt.train"]]
    a = build_vocab(texts, tmp_path / "a.txt", 600).read_bytes()
    assert all(build_vocab(texts, tmp_path / "b.txt", 600).read_bytes() == a for _ in range(3))
    vocab = a.decode().splitlines()
    assert len(vocab) == len(set(vocab)) == 600
    # every training word is covered: no [UNK] under the tokenizers WordPiece model
    tok = load_tokenizer(tmp_path / "a.txt", do_lower_case=False)
    words = [line.split()[0] for p in texts for line in p.read_text().splitlines() if line]
    assert all(tok.unk_id not in tok.encode(w, add_special_tokens=False) for w in words)


def test_wordpiece_merges_follow_frequency_then_order():
    specials = ("[UNK]",)
    # "c"+"##d" occurs 3 times, "a"+"##b" twice: the first merge is "cd"
    assert learn_wordpieces({"ab": 2, "cd": 3}, 6, specials)[-1] == "cd"
    # equal counts: the pair that sorts first wins, whatever the order of the counts
    assert learn_wordpieces({"cd": 2, "ab": 2}, 6, specials)[-1] == "ab"
    # merges continue on merged pieces, inside words too ("##b" + "##c" -> "##bc")
    got = learn_wordpieces({"abc": 5, "xbc": 4}, 20, specials)
    assert got[:1] == ["[UNK]"] and "##bc" in got and "abc" in got and "xbc" in got
    assert len(got) < 20  # stops when no pair is left
    with pytest.raises(ValueError, match="vocab_size 3 is below the 1 special"):
        learn_wordpieces({"abc": 1}, 3, specials)


def test_the_shipped_config_is_configs_quickstart_toml():
    assert (ROOT / "configs" / "quickstart.toml").read_text() == default_config()
    assert (
        ROOT / "configs" / "quickstart.toml"
    ).resolve() == ROOT / "xlt_engine" / "quickstart.toml"


def test_quickstart_runs_the_whole_pipeline(tmp_path):
    out = tmp_path / "qs"
    res = CliRunner().invoke(main, ["quickstart", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "| language | direct transfer | + BTF | + self-training |" in res.output
    assert re.search(r"\| tgt \| \d+\.\d\d \| \d+\.\d\d \| \d+\.\d\d \|", res.output)
    results = json.loads((out / "runs" / "all.json").read_text())
    row = results["targets"]["tgt"]
    assert all(0 <= row[c] <= 1 for c in ("direct", "btf", "selftrain"))
    pair = out / "runs" / "src-tgt"
    assert (pair / "selftrain" / "round-2" / "soft" / "model").is_dir()
    # it ends with its report (test_pipeline.py checks a report's sections and numbers)
    assert f"report: {out / 'report.html'} (" in res.output
    page = (out / "report.html").read_text()
    assert "<h3>all.json: entity F1 (%)</h3>" in page
    plots = int(re.search(r"report: .* \((\d+) plots", res.output)[1])
    assert plots > 0 and page.count('src="data:image/png;base64,') == plots  # pictures
    # its config re-runs where it ran: run --stage all --config <it> reuses every stage
    cfg = out / "quickstart.toml"
    assert f"its config: {cfg}" in res.output
    repeat = shlex.join(
        ["xlt-engine", "quickstart", "--out", str(out), "--no-progress", "--resume"]
    )
    assert f"to repeat it (finished stages are reused): {repeat}\n" in res.output
    rerun = CliRunner().invoke(
        main, ["run", "--stage", "all", "--config", str(cfg), "--no-progress"]
    )
    assert rerun.exit_code == 0 and rerun.output.count("not run again") == 4, rerun.output
    again = CliRunner().invoke(main, ["quickstart", "--out", str(out)])
    assert again.exit_code != 0 and "--resume" in again.output  # never overwrites a run
    resumed = CliRunner().invoke(main, ["quickstart", "--out", str(out), "--resume"])
    assert resumed.exit_code == 0 and resumed.output.count("not run again") == 4
    # a report the user edited is not rewritten by --resume (it was, issue 66); --overwrite is
    # the user's yes
    page = out / "report.html"
    page.write_text(page.read_text() + "<!-- my notes -->\n")
    edited = page.read_bytes()
    kept = CliRunner().invoke(main, ["quickstart", "--out", str(out), "--resume"])
    assert kept.exit_code == 1 and "changed since xlt-engine report wrote it" in kept.output
    assert page.read_bytes() == edited
    args = ["quickstart", "--out", str(out), "--resume", "--overwrite"]
    assert CliRunner().invoke(main, args).exit_code == 0 and page.read_bytes() != edited


def _small_quickstart(out: Path) -> dict:
    """The quickstart's steps (prepare, load_config, run_all) at a quarter of its data and a
    fraction of its epochs (enough for every step to train: the hard step gets rows)."""
    from xlt_engine.engine.experiment.config import load_config
    from xlt_engine.engine.experiment.pipeline import run_all
    from xlt_engine.quickstart import prepare

    cfg_path = prepare(out, 1, Sizes(train=200, dev=30, test=60, vocab_size=600))
    sets = ["btf.train.epochs=2", "finetune.train.epochs=6", "selftrain.soft.epochs=2"]
    sets += ["selftrain.hard.epochs=1", "seed=1", f"out={str(out / 'runs')!r}"]
    run_all(load_config(cfg_path, sets), echo=None)
    return json.loads((out / "runs" / "all.json").read_text())["targets"]


def test_one_seed_gives_one_result_from_nothing(tmp_path):
    # data, vocabulary, random model and every stage, twice from nothing: the same table and the
    # same final weights, bit for bit (run smaller than the quickstart, which only shortens the
    # loops: the full quickstart runs once in the test above)
    first, second = tmp_path / "a", tmp_path / "b"
    assert _small_quickstart(first) == _small_quickstart(second)
    kept = json.loads((first / "runs/src-tgt/selftrain/round-1/filter.json").read_text())
    assert kept["source_rows_kept"] > 0 and kept["pseudo_rows"] > 0  # the hard step trained
    for name in ("model.safetensors", "voters.safetensors"):
        final = Path("runs", "src-tgt", "selftrain", "model", name)
        assert (second / final).read_bytes() == (first / final).read_bytes()
