"""Every structured reader refuses a key, field, column or element given twice, naming the file
and line ("the last one wins" read a review labelled positive and negative as negative); the
same documents without the duplicate read as before. And a CoNLL line gets the same verdict
wherever it sits, with an error that quotes at most ~200 characters of it."""

import json
import re

import pytest
import tomllib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xlt_engine.data.cls10 import read_cls10
from xlt_engine.data.conll import read_conll
from xlt_engine.data.marc import read_marc
from xlt_engine.data.parallel import read_parallel
from xlt_engine.data.text import read_labeled
from xlt_engine.data.tokenizer import load_tokenizer
from xlt_engine.inputs import DuplicateKeyError, duplicate_json_key, loads_json, read_jsonl
from xlt_engine.model import BertConfig

# ---- the strict JSON reader, on random documents

keys = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6)
scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


def _objects(doc, path=()):
    """Paths to every object (dict) in ``doc``."""
    if isinstance(doc, dict):
        yield path
        for k, v in doc.items():
            yield from _objects(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _objects(v, (*path, i))


def _dump_with_duplicate(doc, target, key) -> str:
    """``doc`` as indented JSON, the object at ``target`` holding ``key`` twice (its first
    entry repeated at the end)."""

    def dump(node, path, depth):
        pad, inner = "  " * depth, "  " * (depth + 1)
        if isinstance(node, dict):
            items = [f"{inner}{json.dumps(k)}: {dump(v, (*path, k), depth + 1)}"
                     for k, v in node.items()]  # fmt: skip
            if path == target:
                items.append(f"{inner}{json.dumps(key)}: {json.dumps(node[key])}")
            return "{\n" + ",\n".join(items) + "\n" + pad + "}" if items else "{}"
        if isinstance(node, list):
            items = [f"{inner}{dump(v, (*path, i), depth + 1)}" for i, v in enumerate(node)]
            return "[\n" + ",\n".join(items) + "\n" + pad + "]" if items else "[]"
        return json.dumps(node)

    return dump(doc, (), 0)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(doc=documents, data=st.data())
def test_a_duplicated_key_anywhere_is_refused_with_its_line(doc, data):
    text = json.dumps(doc, indent=2)
    assert loads_json(text, "doc.json") == json.loads(text)  # without: read as ever
    targets = [p for p in _objects(doc) if _at(doc, p)]
    if not targets:
        return
    target = data.draw(st.sampled_from(targets))
    key = data.draw(st.sampled_from(sorted(_at(doc, target))))
    dup = _dump_with_duplicate(doc, target, key)
    with pytest.raises(DuplicateKeyError) as info:
        loads_json(dup, "doc.json")
    line, found = duplicate_json_key(dup)
    assert found == key
    assert str(info.value).startswith(f"doc.json:{line}: the key ")
    # the line named is the one that holds the repeated key
    assert dup.split("\n")[line - 1].strip().startswith(json.dumps(key) + ":")


def _at(doc, path):
    for p in path:
        doc = doc[p]
    return doc


def test_braces_and_quotes_inside_strings_do_not_fool_the_line_finder():
    text = '{"a": "}{\\"a\\": 1", "b": {"a": 1},\n "a": 2}'
    assert duplicate_json_key(text) == (2, "a")
    assert duplicate_json_key('{"a": {"a": 1}, "b": [{"a": 1}, {"a": 2}]}') is None


# ---- each reader


def test_jsonl_examples_refuse_a_field_given_twice(tmp_path):
    path = tmp_path / "reviews.jsonl"
    path.write_text(
        '{"text": "fine", "label": "positive"}\n'
        '{"text": "great", "label": "positive", "label": "negative"}\n'
    )
    with pytest.raises(DuplicateKeyError, match=r"reviews.jsonl:2: the key 'label' is given twice"):
        read_labeled(path)
    path.write_text('{"text": "great", "label": "positive"}\n')
    assert [e.label for e in read_labeled(path)] == ["positive"]


def test_cls10_refuses_an_item_with_two_ratings(tmp_path):
    path = tmp_path / "train.review"
    item = "<item><rating>{}</rating><text>gut</text><title>t</title>{}</item>"
    path.write_text(
        "<items>\n" + item.format("5.0", "") + "\n" + item.format("5.0", "<rating>1.0</rating>")
        + "\n</items>\n"
    )  # fmt: skip
    with pytest.raises(
        DuplicateKeyError, match=r"train.review:3: the <item> of line 3 has a second <rating>"
    ):
        read_cls10(path)
    path.write_text("<items>\n" + item.format("5.0", "") + "\n</items>\n")
    assert [e.label for e in read_cls10(path)] == ["positive"]


def test_csv_and_tsv_headers_refuse_a_column_named_twice(tmp_path):
    marc = tmp_path / "de.test.csv"
    marc.write_text("orig_test_index,review_body,stars,stars\n1,gut,5,1\n")
    with pytest.raises(DuplicateKeyError, match=r"de.test.csv:1: .*\['stars'\] more than once"):
        read_marc(marc)
    other = tmp_path / "x.csv"
    other.write_text("id,id,review_body,stars\n1,2,gut,5\n")  # an unused column twice too
    with pytest.raises(DuplicateKeyError, match=r"\['id'\]"):
        read_marc(other)
    tsv = tmp_path / "x.tsv"
    tsv.write_text("text\ttext\tlabel\nein\tzwei\tpositive\n")
    with pytest.raises(DuplicateKeyError, match=r"x.tsv:1: the header names a column twice"):
        read_labeled(tsv)


def test_parallel_items_refuse_a_key_given_twice(tmp_path):
    path = tmp_path / "par.jsonl"
    row = {"id": "1", "lang": "de", "text": "a", "label": "x"}
    path.write_text(json.dumps(row)[:-1] + ', "lang": "fr"}\n')
    with pytest.raises(DuplicateKeyError, match=r"par.jsonl:1: the key 'lang'"):
        read_parallel(path)


def test_model_and_tokenizer_configs_and_logs_refuse_a_key_given_twice(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text('{\n  "hidden_size": 64,\n  "num_hidden_layers": 2,\n  "hidden_size": 128\n}\n')
    with pytest.raises(ValueError, match=r"config.json:4: the key 'hidden_size' is given twice"):
        BertConfig.from_json(cfg)
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"]))
    (tok / "tokenizer_config.json").write_text('{"do_lower_case": true,\n "do_lower_case": false}')
    with pytest.raises(ValueError, match=r"tokenizer_config.json:2: the key 'do_lower_case'"):
        load_tokenizer(tok)
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "step": 3}\n')
    with pytest.raises(DuplicateKeyError, match=r"metrics.jsonl:2: the key 'step'"):
        read_jsonl(log)


def test_toml_refuses_a_key_given_twice(tmp_path):
    from xlt_engine.engine.experiment.config import ConfigError, load_config

    path = tmp_path / "x.toml"
    path.write_text('task = "ner"\n[btf]\nbatch_size = 8\nbatch_size = 16\n')
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 4"):
        load_config(path)
    with pytest.raises(tomllib.TOMLDecodeError):
        tomllib.loads(path.read_text())


def test_a_config_json_beyond_a_sane_size_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from xlt_engine.model import config as model_config

    path = tmp_path / "config.json"
    path.write_text("{" + " " * 5000 + "not json")
    monkeypatch.setattr(model_config, "CONFIG_MAX_BYTES", 4096)
    with pytest.raises(
        ValueError, match=r"config.json: 5,009 bytes, over the 4,096 this reader accepts"
    ):
        BertConfig.from_json(path)  # the size, not the JSON error: never parsed


# ---- CoNLL: the same line, the same verdict, wherever it sits


def test_a_conll_line_of_a_million_tokens_is_refused_first_or_in_mid_file(tmp_path):
    giant = " ".join(["tok"] * 1_000_000) + " O"
    good = "EU B-ORG\nrejects O\n"
    for name, text in (("first", giant + "\n\n" + good), ("mid", good + "\n" + giant + "\n")):
        path = tmp_path / f"{name}.conll"
        path.write_text(text)
        with pytest.raises(ValueError) as info:
            read_conll(path)
        msg = str(info.value)
        line = 1 if name == "first" else 4
        assert msg.startswith(f"{path}:{line}: 1,000,001 columns, more than a CoNLL token line has")
        assert len(msg) < 400 + len(str(path)), len(msg)
        assert re.search(r"\.\.\. \(4,000,001 characters\)$", msg)
