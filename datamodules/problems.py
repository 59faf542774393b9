"""Bad input, named and counted: ``DataProblem`` (one file, one reason) and ``ProblemReport``.

Problems found while reading annotations (unknown categories, boxes outside the image or of
zero area, missing files) are fixed or dropped and counted; problems found while decoding a
sample (unreadable image, mask of the wrong size or with values outside the classes) skip
that sample with a logged warning. ``strict=True`` datamodules raise instead, before
training. Conversions (grayscale, RGBA, 16-bit, CMYK, EXIF rotation) are notes, not problems.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

log = logging.getLogger(__name__)

# Conversions applied to readable images: reported by the check, never an error.
CONVERSION_KINDS = ("exif_rotated", "grayscale", "palette", "alpha_dropped", "16_bit", "cmyk")


class DataProblem(Exception):
    """A file that cannot be used as it is: ``kind`` (a short tag), the file, what is wrong."""

    def __init__(self, kind: str, path: str | Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.kind = kind
        self.path = str(path)
        self.message = message


class ProblemReport:
    """Problems (and conversion notes) grouped by kind, each with the files concerned."""

    def __init__(self, name: str = "dataset") -> None:
        self.name = name
        self.checked = 0  # samples whose files were decoded
        self.problems: dict[str, list[str]] = defaultdict(list)
        self.notes: dict[str, list[str]] = defaultdict(list)

    def add(self, problem: DataProblem) -> None:
        self.problems[problem.kind].append(str(problem))

    def note(self, kind: str, path: str | Path) -> None:
        self.notes[kind].append(str(path))

    def extend(self, other: "ProblemReport") -> None:
        for kind, items in other.problems.items():
            self.problems[kind] += items
        for kind, items in other.notes.items():
            self.notes[kind] += items
        self.checked += other.checked

    @property
    def num_problems(self) -> int:
        return sum(len(v) for v in self.problems.values())

    def counts(self) -> dict[str, int]:
        """``{kind: count}`` of problems and notes together."""
        return {k: len(v) for k, v in {**self.problems, **self.notes}.items() if v}

    def summary(self, max_files: int = 5) -> str:
        """Multi-line text: one line per kind with its count, then up to ``max_files`` files."""
        checked = f" ({self.checked} samples decoded)" if self.checked else ""
        if not self.problems and not self.notes:
            return f"{self.name}: no problems{checked}"
        lines = [f"{self.name}: {self.num_problems} problem(s){checked}"]
        for title, groups in (("problem", self.problems), ("converted", self.notes)):
            for kind, items in sorted(groups.items()):
                if not items:
                    continue
                lines.append(f"  [{title}] {kind}: {len(items)}")
                lines += [f"    {item}" for item in items[:max_files]]
                if len(items) > max_files:
                    lines.append(f"    ... and {len(items) - max_files} more")
        return "\n".join(lines)

    def log(self) -> None:
        """Warn with the summary when anything was found (counted skips stay visible)."""
        if self.num_problems:
            log.warning("%s", self.summary())
        elif self.notes:
            log.info("%s", self.summary())

    def raise_if_problems(self) -> None:
        """``strict`` mode: a ``ValueError`` listing every kind and its files."""
        if self.num_problems:
            raise ValueError(self.summary(max_files=20))
