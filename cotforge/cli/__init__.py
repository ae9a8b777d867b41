"""The `cotforge` command line: thin on purpose, it parses options and calls the library.

`main` holds the pipeline commands; command groups (train, review) live in their own modules and
are added to the one app here.
"""

from cotforge.cli import stages as _stages  # noqa: F401 - registers the pipeline commands
from cotforge.cli.main import app

__all__ = ["app"]
