"""Experiments: the TOML config tree (``config``), stage building (``stages``), run folders,
fingerprints and the reuse of finished stages (``runs``), and the whole method in one call
(``pipeline.run_all``)."""
