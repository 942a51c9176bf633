"""Command line: ``python -m custom.data prepare KIND --source PATH --out DIR [options]``.

Options are the keyword arguments of ``custom.data.prepare.prepare`` with dashes
(``--labeled-fraction 0.05``, ``--hide-unlabeled-masks``, ...); ``--help`` lists them.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import fire

from custom.utils.cli import OptionError
from .errors import DataValidationError, SourceLayoutError, SplitError
from .prepare import prepare

__all__ = ["main"]


@functools.wraps(prepare)
def _prepare_command(*args: Any, **kwargs: Any) -> None:
    """``prepare`` for the command line: prints the summary (not the returned dict); input errors
    end the program with status 2 and the message instead of a traceback."""
    from custom.utils.runtime import input_error_of

    try:
        prepare(*args, **kwargs)
    except (OptionError, DataValidationError, SplitError, SourceLayoutError, FileExistsError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except (ValueError, OSError, RecursionError, MemoryError) as error:
        # any other input error the project's own code raises (a bad option value, an unreadable
        # path, a full disk): one line, never a traceback; a failure elsewhere keeps its traceback
        from custom.utils.outputs import os_error_line

        found = input_error_of(error) or os_error_line(error)
        if found is None:
            raise
        print(f"error: {found}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """Dispatch the subcommands."""
    fire.Fire({"prepare": _prepare_command})


if __name__ == "__main__":
    main()
