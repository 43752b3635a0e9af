"""Experiments: the TOML config tree (``config``), the stages as plug-ins (``registry``: one
``Stage`` object each; the built-ins in ``stages``), run folders, fingerprints and the reuse of
finished stages (``runs``), running one stage (``execute.run_stage``), and the whole method in
one call (``pipeline.run_all``)."""

from xlt_engine.engine.experiment import stages  # noqa: F401  (registers the built-in stages)
