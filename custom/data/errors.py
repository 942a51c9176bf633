"""Error types of the data preparation: every problem names the file it concerns."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Problem", "DataValidationError", "SplitError", "ReadError", "SourceLayoutError"]


@dataclass(frozen=True)
class Problem:
    """One problem found in the input data: the file (relative to the source) and what is wrong."""

    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"

    def as_dict(self) -> dict[str, str]:
        """JSON form, as saved in ``skipped.json``."""
        return {"file": self.file, "problem": self.message}


class DataValidationError(ValueError):
    """The input data failed validation; ``problems`` lists every problem found, one per line."""

    def __init__(
        self,
        problems: Iterable[Problem],
        context: str = "",
        hint: str = "(pass --skip-invalid to skip the affected images instead)",
    ) -> None:
        self.problems: list[Problem] = list(problems)
        head = f"{len(self.problems)} problem(s) in the input data"
        if context:
            head += f" ({context})"
        lines = [f"{head} {hint}:".replace(" :", ":")] + [f"  {problem}" for problem in self.problems]
        super().__init__("\n".join(lines))


class SplitError(ValueError):
    """The requested split cannot be made (e.g. a fraction that selects no image); names the numbers."""


class ReadError(Exception):
    """A file could not be read or decoded; the message says why (the caller adds the file name)."""


class SourceLayoutError(ValueError):
    """The source folder does not have the layout the dataset kind expects; says what was expected."""
