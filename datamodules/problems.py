"""Bad input, named and counted: ``DataProblem`` (one file, one reason), ``ProblemReport`` (by
kind, with the files) and ``ProblemLog`` (a run's, each problem logged once).

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
from typing import Iterable

log = logging.getLogger(__name__)

class DataProblem(Exception):
    """A file that cannot be used as it is: ``kind`` (a short tag), the file, what is wrong."""

    def __init__(self, kind: str, path: str | Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.kind = kind
        self.path = str(path)
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        # Exceptions pickle their ``args`` (here the joined text) by default: rebuild from the
        # parts instead, so a problem met in a DataLoader worker reaches the main process.
        return type(self), (self.kind, self.path, self.message)


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
        """The summary: a warning when it holds problems, else an info line."""
        log.log(logging.WARNING if self.num_problems else logging.INFO, "%s", self.summary())

    def raise_if_problems(self) -> None:
        """``strict`` mode: a ``ValueError`` listing every kind and its files."""
        if self.num_problems:
            raise ValueError(self.summary(max_files=20))


class ProblemLog:
    """One run's problems and conversions, each logged once, when first met; ``report`` counts
    each once (for the run summary).

    A sample's problem is one per (kind, file), however often the file is drawn (every epoch,
    in any worker) and whatever the decoder's message said that time; an annotation's problem
    is one per text (kind, file, annotation). Problems are warnings; conversions (grayscale,
    RGBA, 16-bit, CMYK, ...) are info lines, since a large dataset holds many of them and
    training uses them as converted.
    """

    def __init__(self, name: str = "run") -> None:
        self.name = name
        self._entries: dict[tuple[bool, str, str], str] = {}  # (is problem, kind, identity) -> text

    def record(self, problems: Iterable[DataProblem] = (), notes: Iterable[tuple[str, str]] = ()) -> None:
        """Count ``problems`` met decoding samples and ``notes`` (``(kind, path)`` conversions)."""
        for problem in problems:
            self._add(True, problem.kind, problem.path, str(problem))
        for kind, path in notes:
            self._add(False, kind, path, path)

    def record_report(self, report: ProblemReport, *, announce: bool = True) -> None:
        """Count the entries of ``report``, e.g. the one made reading annotations; logging the
        new ones unless ``announce`` is off (processes other than rank 0 of a DDP run, which
        all read the same annotations)."""
        for kind, items in report.problems.items():
            for item in items:
                self._add(True, kind, item, item, announce)
        for kind, paths in report.notes.items():
            for path in paths:
                self._add(False, kind, path, path, announce)

    def merge(self, other: "ProblemLog") -> None:
        """Count the entries of ``other`` (another process's log: they were logged there)."""
        for key, text in other._entries.items():
            self._entries.setdefault(key, text)

    @property
    def report(self) -> ProblemReport:
        """Everything recorded, by kind, each once."""
        report = ProblemReport(self.name)
        for (is_problem, kind, _), text in self._entries.items():
            (report.problems if is_problem else report.notes)[kind].append(text)
        return report

    def _add(self, is_problem: bool, kind: str, identity: str, text: str, announce: bool = True) -> None:
        key = (is_problem, kind, identity)
        if key in self._entries:
            return
        self._entries[key] = text
        if not announce:
            return
        if is_problem:
            log.warning("data problem [%s] %s", kind, text)
        else:
            log.info("converted [%s] %s", kind, text)
