"""The `cotforge` command line: thin on purpose, it parses options and calls the library.

`main` holds the app, `demo`, `demo-data` and `teacher-sim`; `stages` the pipeline commands; command
groups (review, train) live in their own modules and are added to the one app here.
"""

from cotforge.cli import review as _review
from cotforge.cli import stages as _stages  # noqa: F401 - registers the pipeline commands
from cotforge.cli import train as _train
from cotforge.cli.main import app

app.add_typer(_review.app, name="review")
app.add_typer(_train.app, name="train")
app.command("eval")(_train.eval_command)

__all__ = ["app"]
