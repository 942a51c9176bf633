"""Shared command-line helpers: boolean option parsing and the one-line error exit.

``fire`` hands ``--flag false`` over as the string ``"false"`` (truthy), ``--flag False`` as a
bool and ``--flag 0`` as an int; ``monai.bundle run`` passes such values into the configs
unchanged. :func:`parse_bool` turns all of them into a bool, or refuses the value by name.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "OptionError",
    "parse_bool",
    "TRUE_WORDS",
    "FALSE_WORDS",
    "exit_on_error",
    "refuse_stray_arguments",
    "without_stray_arguments",
]

TRUE_WORDS = frozenset({"true", "1", "yes", "y", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "n", "off"})


class OptionError(ValueError):
    """A command-line or config option has a value it cannot take; the message names the option."""


def parse_bool(value: Any, option_name: str) -> bool:
    """``value`` as a bool: a bool, 0/1, or true/false/yes/no/on/off/1/0 in any case.

    Anything else raises :class:`OptionError` naming ``option_name``.
    """
    if isinstance(value, bool):
        return value
    if hasattr(value, "item") and getattr(value, "size", 1) == 1 and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy / torch scalars
        if isinstance(value, bool):
            return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in TRUE_WORDS:
            return True
        if text in FALSE_WORDS:
            return False
    name = option_name if option_name.startswith("-") else f"--{option_name}"
    raise OptionError(f"{name}: expected true or false (also 1/0, yes/no), got {value!r}")


def refuse_stray_arguments(stray: tuple[Any, ...]) -> None:
    """Refuse values no option took. ``fire`` hands a value it cannot place on an option to the next
    positional parameter: ``--seeds 1 2`` sets ``seeds`` to 1 and the parameter after it to 2
    (``custom.tools.compare``: ``max_iterations``, a 2-iteration run reported as a result). Entry
    points with list options take ``*stray`` after their positional parameters and call this first."""
    if stray:
        raise OptionError(
            f"unexpected argument(s) {' '.join(str(s) for s in stray)}: give every option as --name VALUE "
            "and a list comma-separated without spaces (--seeds 1,2)"
        )


def without_stray_arguments(function: Callable) -> Callable:
    """``function`` for ``fire`` with a ``*stray`` parameter after its required positional ones (the
    others become keyword-only), so that a value no option took (``--ids 4950 4999``) is refused in
    one line before anything runs: without it fire binds the value to the next parameter, or runs
    the command and only then fails on the value it could not consume."""
    signature = inspect.signature(function)
    params = list(signature.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    rest = [
        p.replace(kind=p.KEYWORD_ONLY) if p.kind is p.POSITIONAL_OR_KEYWORD else p
        for p in params
        if p not in positional and p.kind is not p.VAR_KEYWORD
    ]
    var_kw = [p for p in params if p.kind is p.VAR_KEYWORD]
    stray = inspect.Parameter("stray", inspect.Parameter.VAR_POSITIONAL)
    names = [p.name for p in positional]

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        open_slots = len([n for n in names if n not in kwargs])
        refuse_stray_arguments(args[open_slots:])
        return function(*args, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=[*positional, stray, *rest, *var_kw])
    return wrapper


def exit_on_error(errors: tuple[type[BaseException], ...], status: int = 2) -> Callable[[Callable], Callable]:
    """Decorator for command-line entry points: the listed error types (and :class:`OptionError`)
    print ``error: <message>`` to stderr and exit with ``status``, without a traceback."""

    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except (OptionError, *errors) as error:
                print(f"error: {error}", file=sys.stderr)
                sys.exit(status)

        return wrapper

    return decorate


def command(function: Callable, report: Callable[[Any], None] | None = None) -> Callable:
    """``function`` as a ``fire`` command whose options are its own parameters (one source of truth:
    the signature, its defaults and its docstring), then ``report`` of what it returned."""

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> None:
        result = function(*args, **kwargs)
        if report is not None:
            report(result)

    return run
