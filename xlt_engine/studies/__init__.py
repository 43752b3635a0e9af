"""The research harness over experiments: the paper's ablations (``ablate``), the threshold
and rounds studies (``sweeps``), their tables (``tables``) and the HTML report (``report``)."""
