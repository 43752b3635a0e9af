"""``python -m xlt_engine.cli``: the command line (``xlt_engine.cli.main``)."""

from xlt_engine.cli import main

main()
