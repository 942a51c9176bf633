"""``python -m custom.tools.bench``: the benchmarks as one ``fire`` command (see :mod:`custom.tools.bench`).

Each subcommand's options are its function's own parameters (one source of truth: the signature,
its defaults and its docstring, which ``--help`` shows); ``--json``, given to any subcommand, prints
the result as one JSON object and nothing else on stdout (every other print goes to stderr)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from custom.tools.bench.evaluate import bench_evaluate, print_evaluate
from custom.tools.bench.gpu_check import print_gpu_check, run_gpu_check
from custom.tools.bench.infer import bench_infer, print_infer
from custom.tools.bench.reference import compare, print_comparison
from custom.tools.bench.train import bench_train, print_train
from custom.utils.cli import OptionError, command, parse_bool, without_stray_arguments

__all__ = ["SUBCOMMANDS", "json_option", "main"]

# subcommand -> (the benchmark, how its result is printed without --json)
SUBCOMMANDS: dict[str, tuple[Callable[..., dict], Callable[[dict], None]]] = {
    "train": (bench_train, print_train),
    "infer": (bench_infer, print_infer),
    "evaluate": (bench_evaluate, print_evaluate),
    "reference": (compare, print_comparison),
    "gpu": (run_gpu_check, print_gpu_check),
}


def json_option(args: Sequence[str]) -> tuple[bool, list[str]]:
    """Whether the command line asks for ``--json`` (``--json``, ``--json true``, ``--json=yes``; not
    ``--json false``), and the command line without it; a value that is not a boolean is refused."""
    args, rest, wanted = list(args), [], False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--json="):
            wanted = parse_bool(arg.split("=", 1)[1], "json")
        elif arg == "--json":
            value = args[i + 1] if i + 1 < len(args) else ""
            if value and not value.startswith("-") and value not in SUBCOMMANDS:
                wanted, i = parse_bool(value, "json"), i + 1
            else:
                wanted = True
        else:
            rest.append(arg)
        i += 1
    return wanted, rest


def main(argv: Sequence[str] | None = None) -> None:
    import fire

    from custom.utils.runtime import setup

    setup()
    try:
        as_json, args = json_option(sys.argv[1:] if argv is None else argv)
        real_stdout = sys.stdout

        def report(printer: Callable[[dict], None]) -> Callable[[dict], None]:
            def emit(result: dict) -> None:
                if as_json:
                    real_stdout.write(json.dumps(result) + "\n")
                    real_stdout.flush()
                else:
                    printer(result)

            return emit

        commands: dict[str, Any] = {
            name: without_stray_arguments(command(run, report(printer))) for name, (run, printer) in SUBCOMMANDS.items()
        }
        if as_json:  # keep stdout for the one JSON object: anything else that prints goes to stderr
            sys.stdout = sys.stderr
        try:
            fire.Fire(commands, command=args, name="custom.tools.bench")
        finally:
            sys.stdout = real_stdout
    except OptionError as error:  # bad input: one line
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as error:  # a run that failed (a child process, a stage): its message, no traceback
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
