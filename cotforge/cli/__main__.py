"""`python -m cotforge.cli`: the same app as the `cotforge` script."""

from cotforge.cli import app

app()
