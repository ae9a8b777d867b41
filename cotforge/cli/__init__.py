"""The `cotforge` command line: thin on purpose, it parses options and calls the library.

`main` holds the pipeline commands; command groups (train, review) live in their own modules and
are added to the one app here.
"""

from cotforge.cli import train as _train
from cotforge.cli.main import app

app.add_typer(_train.app, name="train")
app.command("eval")(_train.eval_command)

__all__ = ["app"]
