"""Progress of long work: a bar on a terminal, plain lines in a log file.

Cluster jobs write standard output to a file, where a live bar shows nothing until the end
(or a stream of escape codes). When standard output is not a terminal, :func:`progress_bar`
prints plain lines instead, e.g.::

    predict: frames 12/30, tiles 4/4, 3.1 frames/s, 6 s left

one every ``every_seconds`` (10 s) and each time the first counted task passes another
``every_percent`` (10 %) of its total, and a last line when the work ends. No ANSI escapes,
no carriage returns. Both kinds offer the subset of ``rich.progress.Progress`` used here:
``add_task``, ``advance``, ``reset``, ``update``, as a context manager. Used by predict (both
routes), eval and export.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


@dataclass
class _Task:
    description: str
    total: int | None
    completed: int = 0


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s`` or ``2 h 10 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class LineProgress:
    """Plain progress lines (module docstring) on ``stream``.

    Args:
        title: the first word of each line (``predict``, ``eval``, ``export``).
        stream: where lines go (default: standard output, looked up when created).
        every_seconds: the longest time between two lines while work goes on.
        every_percent: a line each time the first task with a total passes this step.
    """

    def __init__(
        self,
        title: str,
        stream: TextIO | None = None,
        every_seconds: float = 10.0,
        every_percent: int = 10,
    ):
        self.title, self.stream = title, stream or sys.stdout
        self.every_seconds, self.every_percent = every_seconds, every_percent
        self.tasks: list[_Task] = []
        self._start = self._last = time.perf_counter()
        self._step = 0  # the last percent step a line was printed for

    def __enter__(self) -> LineProgress:
        self._start = self._last = time.perf_counter()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None and any(t.completed for t in self.tasks):
            self._print(f"done in {duration(time.perf_counter() - self._start)}")

    def add_task(self, description: str, total: int | None = None) -> int:
        self.tasks.append(_Task(description, total))
        return len(self.tasks) - 1

    def reset(self, task: int, total: int | None = None) -> None:
        self.tasks[task].completed, self.tasks[task].total = 0, total

    def update(self, task: int, total: int | None = None, advance: int = 0) -> None:
        if total is not None:
            self.tasks[task].total = total
        if advance:
            self.advance(task, advance)

    def advance(self, task: int, n: int = 1) -> None:
        self.tasks[task].completed += n
        now = time.perf_counter()
        main = self._main()
        step = 0
        if main is not None and main.total:
            step = int(100 * main.completed / main.total) // self.every_percent
        if now - self._last >= self.every_seconds or step > self._step:
            self._step = max(self._step, step)
            self._print(self._rate_and_left(main, now - self._start))

    def _main(self) -> _Task | None:
        """The first task with a known total: rate and time left are of it."""
        return next((t for t in self.tasks if t.total), None)

    def _rate_and_left(self, main: _Task | None, elapsed: float) -> str:
        if main is None or not main.completed or elapsed <= 0:
            return f"{duration(elapsed)} so far"
        rate = main.completed / elapsed
        left = (main.total - main.completed) / rate
        shown = f"{rate:.2f}" if rate < 10 else f"{rate:.0f}"
        return f"{shown} {main.description}/s, {duration(left)} left"

    def line(self, tail: str) -> str:
        """``<title>: <task> <done>/<total>, ..., <tail>``."""
        counts = [
            f"{t.description} {t.completed}/{t.total}"
            if t.total
            else f"{t.description} {t.completed}"
            for t in self.tasks
        ]
        return f"{self.title}: {', '.join([*counts, tail])}"

    def _print(self, tail: str) -> None:
        print(self.line(tail), file=self.stream, flush=True)
        self._last = time.perf_counter()


def progress_bar(enabled: bool, title: str = "progress", stream: TextIO | None = None):
    """A rich bar (transient, as before) when ``stream`` (standard output) is a terminal,
    else :class:`LineProgress`; nothing shown when not ``enabled``."""
    stream = stream or sys.stdout
    if enabled and not _is_terminal(stream):
        return LineProgress(title, stream)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    return Progress(*columns, disable=not enabled, transient=True)


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
