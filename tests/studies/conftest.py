"""The studies run over the engine's tiny model, CoNLL slices and NER config: the same fixtures."""

from tests.engine.conftest import conll, ner_cfg, tiny

__all__ = ["conll", "ner_cfg", "tiny"]
