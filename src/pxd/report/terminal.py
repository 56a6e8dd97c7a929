"""Terminal output (rich lives only here): progress bars, tables, one-line messages, JSON."""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager

from rich.console import Console
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from pxd.configs.env import env_number
from pxd.errors import raise_pending


class Reporter:
    """What a command prints. `quiet` keeps only results; `json_mode` prints one JSON object;
    `silent` prints only errors (the other processes of a multi-process run)."""

    def __init__(self, quiet: bool = False, json_mode: bool = False, silent: bool = False):
        self.quiet = quiet or json_mode or silent
        self.json_mode = json_mode or silent
        self.silent = silent
        self.out = Console(highlight=False)
        self.err = Console(stderr=True, highlight=False)

    def info(self, msg: str) -> None:
        if not self.quiet:
            self.err.print(msg)

    def error(self, msg: str) -> None:
        self.err.print(f"[bold red]error:[/] {msg}", soft_wrap=True)

    def done(self, msg: str) -> None:
        """Where the results went: shown even with --quiet, not with --json."""
        if not self.json_mode:
            self.err.print(msg, soft_wrap=True, markup=False)

    def table(self, title: str, columns: list[str], rows: list[list]) -> None:
        """A table; stacked (one block per row) when it would not fit the width, so that
        no cell is ever cut, in a narrow terminal or a log (80 columns)."""
        if self.json_mode:
            return
        cells = [[fmt(v) for v in r] for r in rows]
        t = Table(title=title)
        for c in columns:
            t.add_column(c, no_wrap=True)
        for r in cells:
            t.add_row(*r)
        width = self.out.width
        natural = Measurement.get(self.out, self.out.options.update_width(10_000), t).maximum
        if natural <= width:
            self.out.print(t)
            return
        self.out.print(title, markup=False, soft_wrap=True)
        for r in cells:
            self.out.print(r[0], markup=False, soft_wrap=True)
            line = " "
            for c, v in zip(columns[1:], r[1:], strict=False):
                item = f" {c} {v}"
                if len(line) + len(item) > width and line.strip():
                    self.out.print(line.rstrip(), markup=False, soft_wrap=True)
                    line = " "
                line += item + " "
            if line.strip():
                self.out.print(line.rstrip(), markup=False, soft_wrap=True)

    def text(self, s: str) -> None:
        if not self.json_mode:
            self.out.print(s, soft_wrap=True)

    def json(self, obj) -> None:
        if self.json_mode and not self.silent:
            sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")

    @contextmanager
    def progress(self, description: str, total: int):
        """Yields `advance(n, **fields)`; fields (e.g. bpd, img/s) show beside the bar."""
        if self.quiet:
            yield lambda n=1, **kw: raise_pending()
            return
        if not self.err.is_terminal:  # a log: plain lines, not redraws nobody sees
            with self._log_progress(description, total) as advance:
                yield advance
            return
        fields_col = TextColumn("{task.fields[extra]}")
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            fields_col,
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.err,
            transient=False,
        ) as prog:
            task = prog.add_task(description, total=total, extra="")

            def advance(n=1, **kw):
                raise_pending()
                extra = "  ".join(f"{k} {fmt(v)}" for k, v in kw.items())
                prog.update(task, advance=n, extra=extra)

            yield advance


    @contextmanager
    def _log_progress(self, description: str, total: int):
        """A line every PXD_PROGRESS_SECONDS (default 30) and at the end, with an ETA."""
        every = env_number("PXD_PROGRESS_SECONDS", 30.0)
        t0 = last = time.perf_counter()
        done = [0]

        def line(extra: str) -> None:
            el = time.perf_counter() - t0
            k = done[0]
            eta = f"ETA {hms(el * (total - k) / k)}" if 0 < k < total else (
                "done" if k >= total else "ETA --")
            pct = f" ({100 * k / total:.0f}%)" if total else ""
            self.err.print(f"{description}: {k}/{total}{pct}, {hms(el)} elapsed, {eta}"
                           + (f", {extra}" if extra else ""), markup=False, soft_wrap=True)

        def advance(n=1, **kw):
            nonlocal last
            raise_pending()
            done[0] += n
            now = time.perf_counter()
            if now - last >= every and done[0] < total:
                last = now
                line("  ".join(f"{k} {fmt(v)}" for k, v in kw.items()))

        yield advance
        if total:
            line("")


def hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


# --------------------------------------------------------------------------- third parties

_NOISY_LOGGERS = ("absl", "jax", "jaxlib", "orbax", "etils", "tensorflow",
                  "tensorflow_datasets", "matplotlib", "PIL")


def quiet_third_party(quiet: bool = True) -> None:
    """Keep other libraries' log lines and warnings off the terminal unless asked for."""
    import logging
    import os
    import warnings

    # CRITICAL, not ERROR: orbax logs its failed background writes (e.g. a full disk) as
    # ERROR tracebacks before pxd reports them as one line.
    level = logging.CRITICAL if quiet else logging.NOTSET
    if quiet:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        warnings.filterwarnings("ignore")
    else:
        warnings.resetwarnings()
    try:  # absl's logger must be absl's own class, so import it before touching it
        import absl.logging

        absl.logging.set_verbosity(absl.logging.FATAL if quiet else absl.logging.INFO)
        absl.logging._warn_preinit_stderr = False
    except ImportError:
        pass
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(level)
