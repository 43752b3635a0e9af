"""Entity-matched corpus builder and the `xlt-engine corpus` command."""

import re
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from xlt_engine.cli import main
from xlt_engine.data import read_conll
from xlt_engine.data.corpus import (
    EntityMatcher,
    build_corpus,
    entity_names,
    read_entity_map,
    source_entities,
)

SOURCE = """\
-DOCSTART- -X- -X- O

EU NNP B-NP I-ORG
rejects VBZ B-VP O
German JJ B-NP I-MISC
call NN I-NP O
to TO B-VP O
boycott VB I-VP O
British JJ B-NP I-MISC
lamb NN I-NP O
. . O O

Peter NNP B-NP I-PER
Blackburn NNP I-NP I-PER
in IN O O
New NNP B-NP I-LOC
York NNP I-NP I-LOC
"""


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "eng.train"
    path.write_text(SOURCE, encoding="utf-8")
    return path


def test_source_entities_and_names(source, tmp_path):
    conll = read_conll(source)
    assert source_entities([conll]) == {
        "EU": 1,
        "German": 1,
        "British": 1,
        "Peter Blackburn": 1,
        "New York": 1,
    }
    m = tmp_path / "map.tsv"
    m.write_text("# comment\nGerman\tdeutsche\nGerman\tdeutschen\nNew York\tNew York City\n")
    mapping = read_entity_map(m)
    assert mapping == {"German": ["deutsche", "deutschen"], "New York": ["New York City"]}
    names = entity_names([conll], mapping, min_length=3)
    assert set(names) == {"deutsche", "deutschen", "British", "Peter Blackburn", "New York City"}


def test_whole_word_case_sensitive_matching():
    m = EntityMatcher(["Paris", "New York", "New York City", "U.S.", "EU"])
    names = lambda line: {m.names[i] for i in m.find(line)}  # noqa: E731
    assert names("Paris, the capital") == {"Paris"}
    assert names("Paris's mayor") == {"Paris"}
    assert names("a Parisian cafe") == set()
    assert names("paris in lower case") == set()
    assert names("from New York City to Paris") == {"New York", "New York City", "Paris"}
    assert names("New Yorker magazine") == set()
    assert names("the U.S.-based firm") == {"U.S."}
    assert names("EUROPE and EU") == {"EU"}
    assert names("Über München") == set()


def test_build_dedup_cap_and_counts(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(
        textwrap.dedent("""\
        Berlin ist groß.
        Berlin ist groß.
        Nichts hier.
        In Berlin und Paris.
        Berlin wieder.
        Paris allein.
        Berliner Luft.
        """),
        encoding="utf-8",
    )
    out = tmp_path / "out" / "task.txt"
    stats = build_corpus(["Berlin", "Paris"], text, out, max_per_entity=2)
    assert out.read_text(encoding="utf-8").splitlines() == [
        "Berlin ist groß.",
        "In Berlin und Paris.",
        "Paris allein.",
    ]
    assert (stats.lines_read, stats.lines_matched, stats.lines_kept) == (7, 5, 3)
    assert (stats.duplicates, stats.capped) == (1, 1)
    assert stats.kept_per_entity == {"Berlin": 2, "Paris": 2}
    assert "lines kept: 3" in stats.summary()


def test_unicode_separators_are_text_not_line_ends_or_blanks(tmp_path):
    """Only \\n ends a line and only spaces, tabs and CR are stripped (issue 21): a NEL or
    U+2028 at a line's edge is kept, a U+2028 inside a line does not split it, and a line holding
    only \\x85 is not blank."""
    text = tmp_path / "t.txt"
    text.write_bytes("\x85Berlin ist gro\u00df.\u2028Paris\t\r\n \t\n\x85\nRom\xa0\n".encode())
    out = tmp_path / "task.txt"
    stats = build_corpus(["Berlin", "Paris", "Rom"], text, out)
    assert out.read_bytes().decode().split("\n") == [
        "\x85Berlin ist gro\u00df.\u2028Paris",
        "Rom\xa0",
        "",
    ]
    assert (stats.lines_read, stats.lines_kept) == (4, 2)
    m = tmp_path / "map.tsv"
    m.write_bytes("New\xa0York \tNueva\u2028York\r\n".encode())
    assert read_entity_map(m) == {"New\xa0York": ["Nueva\u2028York"]}


def test_failed_build_keeps_old_output(tmp_path):
    out = tmp_path / "task.txt"
    out.write_text("previous\n")
    text = tmp_path / "t.txt"
    text.write_bytes(b"Berlin ok\nBerlin \xff\n")
    with pytest.raises(ValueError, match=r"t.txt:2: byte 0xff"):
        build_corpus(["Berlin"], text, out)
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt", "task.txt"]


def test_bad_input(tmp_path):
    m = tmp_path / "map.tsv"
    m.write_text("a\tb\nonly-one-column\n")
    with pytest.raises(ValueError, match=r"map.tsv:2: expected 'source name<TAB>target name'"):
        read_entity_map(m)
    with pytest.raises(ValueError, match="no entity names"):
        build_corpus([], tmp_path / "x", tmp_path / "y")
    with pytest.raises(ValueError, match="missing.txt: no such file"):
        build_corpus(["a b"], tmp_path / "missing.txt", tmp_path / "y")


def test_cli(source, tmp_path):
    text = tmp_path / "de.txt"
    text.write_text("Die EU sagt nein.\nNichts.\nPeter Blackburn in New York.\n")
    out = tmp_path / "task.de.txt"
    res = CliRunner().invoke(
        main, ["corpus", "--source", str(source), "--target-text", str(text), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert out.read_text().splitlines() == ["Die EU sagt nein.", "Peter Blackburn in New York."]
    assert "entities: 5" in res.output and "lines read: 3" in res.output
    assert "lines kept: 2" in res.output and re.search(r"lines/s", res.output)
    res = CliRunner().invoke(
        main,
        [
            "corpus",
            "--source",
            str(tmp_path / "no.train"),
            "--target-text",
            str(text),
            "--out",
            str(out),
        ],
    )
    assert res.exit_code != 0 and "no.train: no such file" in res.output


PEAK = """
import resource, sys
from xlt_engine.data.corpus import build_corpus
names = [f"Name{i} Family{i}" for i in range(2000)] + ["Berlin"]
build_corpus(names, sys.argv[1], sys.argv[2], max_per_entity=5)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_memory_stays_flat(tmp_path):
    """Ten times the input, same peak memory: the file is streamed, not held."""
    peaks = []
    for n in (20_000, 200_000):
        text = tmp_path / f"t{n}.txt"
        with open(text, "w", encoding="utf-8") as f:
            for i in range(n):
                f.write(f"Zeile {i} mit etwas Text über Berlin und andere Orte {i * 7}\n")
        out = subprocess.run(
            [sys.executable, "-c", PEAK, str(text), str(tmp_path / "out.txt")],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks.append(int(out.stdout.strip()))
    # 200k lines are ~13 MB of text; a held file would add that and more
    assert peaks[1] - peaks[0] < 4 * 1024, peaks  # KiB
