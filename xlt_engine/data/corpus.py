"""Entity-matched corpus builder: BTF text in a target language when no task text exists there.

The entity strings of the source training data (its IOB2 spans, words joined by spaces) are
optionally mapped to target-language names through a TSV (``source name<TAB>target name``; a
name may map to several; unmapped names are kept as they are, names are often shared). The
target text is then streamed and a line kept when it holds any of the names as a whole-word,
case-sensitive match of a name that has fewer than ``max_per_entity`` kept lines so far (a
kept line counts for every name it holds); kept lines are deduplicated.

Matching: lines and names are split into word tokens (runs of letters/digits, or single other
non-space characters), and a word-level trie is walked from every token that can start a name,
so a line costs one dictionary probe per token plus a C-level set test that rejects most lines
outright, whatever the number of names (no regex per entity). Whole-word is exact by
construction: "Paris" matches "Paris," and "Paris's" but not "Parisian". Limit: scripts
written without spaces (Chinese, Japanese) need pre-segmented text.

Memory is flat in the input size: one line at a time, plus the names, their counts and a 16-byte
digest per kept line (at most ``max_per_entity`` per name). The output is written to a
temporary file and renamed into place at the end.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from xlt_engine.data.conll import ConllFile
from xlt_engine.data.examples import BLANK, iter_lines, quoted
from xlt_engine.fileio import atomic_file

_WORD = re.compile(r"\w+|[^\w\s]")
_END = ""  # trie key marking "a name ends here" (never a word token)


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def source_entities(files: Iterable[ConllFile]) -> Counter:
    """Entity strings of IOB2-tagged files with their frequencies."""
    out: Counter = Counter()
    for f in files:
        for s in f:
            start = None
            for i, tag in enumerate([*s.tags, "O"]):
                if start is not None and not tag.startswith("I-"):
                    out[" ".join(s.tokens[start:i])] += 1
                    start = None
                if tag.startswith("B-"):
                    start = i
    return out


def read_entity_map(path: str | Path) -> dict[str, list[str]]:
    """``source<TAB>target`` rows (blank lines and ``#`` comments skipped) -> names per source."""
    path = Path(path)
    out: dict[str, list[str]] = {}
    for lineno, line in iter_lines(path):
        if not line.strip(BLANK) or line.startswith("#"):
            continue
        fields = line.split("\t")
        src, tgt = (f.strip(BLANK) for f in fields) if len(fields) == 2 else ("", "")
        if not src or not tgt:
            raise ValueError(
                f"{path}:{lineno}: expected 'source name<TAB>target name', got {quoted(line)}"
            )
        if tgt not in out.setdefault(src, []):
            out[src].append(tgt)
    if not out:
        raise ValueError(f"{path}: no name pairs")
    return out


class EntityMatcher:
    """Whole-word, case-sensitive matching of many names at once (word-level trie)."""

    def __init__(self, names: Iterable[str]):
        self.trie: dict = {}
        self.names: list[str] = []
        for name in dict.fromkeys(names):
            toks = words(name)
            if not toks:
                continue
            node = self.trie
            for t in toks:
                node = node.setdefault(t, {})
            if _END not in node:
                node[_END] = len(self.names)
                self.names.append(name)
        self.first = frozenset(self.trie)

    def __len__(self) -> int:
        return len(self.names)

    def find(self, line: str) -> set[int]:
        """Indices into ``self.names`` of every name occurring in ``line``."""
        toks = words(line)
        if self.first.isdisjoint(toks):
            return set()
        found = set()
        for i, t in enumerate(toks):
            node = self.trie.get(t)
            j = i + 1
            while node is not None:
                if _END in node:
                    found.add(node[_END])
                if j == len(toks):
                    break
                node = node.get(toks[j])
                j += 1
        return found


@dataclass
class CorpusStats:
    entities: int = 0  # names searched for
    lines_read: int = 0
    lines_matched: int = 0  # lines holding at least one name
    lines_kept: int = 0
    duplicates: int = 0  # matched lines already kept
    capped: int = 0  # matched lines whose names all had max_per_entity lines
    kept_per_entity: Counter = field(default_factory=Counter)

    def summary(self, top: int = 10) -> str:
        rows = [
            f"entities: {self.entities}",
            f"lines read: {self.lines_read}",
            f"lines matched: {self.lines_matched}",
            f"lines kept: {self.lines_kept}",
            f"duplicates skipped: {self.duplicates}",
            f"skipped at the per-entity cap: {self.capped}",
        ]
        if self.kept_per_entity:
            # a line kept for one name counts for every name it holds, so a frequent name can
            # exceed the cap: the cap only stops lines from being kept because of it
            rows.append(f"top entities (kept lines holding them): {len(self.kept_per_entity)}")
            rows += [f"  {n}\t{name}" for name, n in self.kept_per_entity.most_common(top)]
        return "\n".join(rows)


def build_corpus(
    names: Iterable[str],
    target_text: str | Path,
    out: str | Path,
    max_per_entity: int = 100,
    encoding: str = "utf-8",
) -> CorpusStats:
    """Stream ``target_text`` and write to ``out`` the deduplicated lines holding any of
    ``names`` (whole words, case-sensitive), at most ``max_per_entity`` lines per name."""
    if max_per_entity < 1:
        raise ValueError(f"max_per_entity must be >= 1, got {max_per_entity}")
    matcher = EntityMatcher(names)
    if not len(matcher):
        raise ValueError("no entity names to search for")
    target_text, out = Path(target_text), Path(out)
    stats = CorpusStats(entities=len(matcher))
    counts = [0] * len(matcher)
    seen: set[bytes] = set()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out, "w", encoding="utf-8", newline="\n") as f:
        for _, line in iter_lines(target_text, encoding):
            stats.lines_read += 1
            line = line.strip(BLANK)
            if not line:
                continue
            found = matcher.find(line)
            if not found:
                continue
            stats.lines_matched += 1
            digest = hashlib.blake2b(line.encode("utf-8"), digest_size=16).digest()
            if digest in seen:
                stats.duplicates += 1
                continue
            if all(counts[i] >= max_per_entity for i in found):
                stats.capped += 1
                continue
            seen.add(digest)
            f.write(line + "\n")
            stats.lines_kept += 1
            for i in found:
                counts[i] += 1
    stats.kept_per_entity = Counter({matcher.names[i]: c for i, c in enumerate(counts) if c})
    return stats


def entity_names(
    source: Iterable[ConllFile], entity_map: dict[str, list[str]] | None = None, min_length: int = 2
) -> list[str]:
    """Names to search for: the source entities (most frequent first), each replaced by its
    target names when the map has it; names shorter than ``min_length`` characters dropped
    (single letters match everywhere)."""
    names = []
    for name, _ in source_entities(source).most_common():
        for n in (entity_map or {}).get(name, [name]):
            if len(n) >= min_length:
                names.append(n)
    return list(dict.fromkeys(names))
