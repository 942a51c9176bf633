"""Command line: ``python -m custom.data prepare KIND --source PATH --out DIR [options]``, and the
further test lists of a prepared dataset (``custom.data.held_out_lists``):

* ``python -m custom.data add-test --dataset-dir DIR --name site2 --source PATH [--kind psfhs] [--ids 4950-4999]``
* ``python -m custom.data shift --dataset-dir DIR [--kinds zoom_out,depth_crop,gain_gamma,low_res,speckle]``

Options are the keyword arguments of the functions with dashes (``--labeled-fraction 0.05``,
``--hide-unlabeled-masks``, ...); ``--help`` lists them.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import fire

from custom.utils.cli import OptionError, without_stray_arguments
from .errors import DataValidationError, SourceLayoutError, SplitError
from .prepare import prepare

__all__ = ["main"]


_prepare = without_stray_arguments(prepare)  # --test-ids 4500 4799: one line, before anything is written


@functools.wraps(_prepare)
def _prepare_command(*args: Any, **kwargs: Any) -> None:
    """``prepare`` for the command line: prints the summary (not the returned dict); input errors
    end the program with status 2 and the message instead of a traceback."""
    from custom.utils.runtime import input_error_of

    try:
        _prepare(*args, **kwargs)
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


def _lists_command(function):
    """A ``custom.data.held_out_lists`` function for the command line: prints the datalist's lists after
    it; input errors are one line and status 2."""
    function = without_stray_arguments(function)

    @functools.wraps(function)
    def command(*args: Any, **kwargs: Any) -> None:
        from .held_out_lists import describe

        try:
            result = function(*args, **kwargs)
        except (OptionError, DataValidationError, SplitError, SourceLayoutError, FileExistsError, FileNotFoundError,
                ValueError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        print(f"added: {result}" if isinstance(result, dict) else f"added {result} frames")
        print(describe(kwargs.get("dataset_dir", args[0] if args else ".")))

    return command


def main() -> None:
    """Dispatch the subcommands."""
    from custom.utils.runtime import setup

    from .held_out_lists import add_shifted_lists, add_test_list

    setup()

    fire.Fire({"prepare": _prepare_command, "add-test": _lists_command(add_test_list),
               "shift": _lists_command(add_shifted_lists)})


if __name__ == "__main__":
    main()
