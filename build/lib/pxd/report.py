"""Terminal output (rich lives only here): progress bars, tables, one-line messages, JSON."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


class Reporter:
    """What a command prints. `quiet` keeps only results; `json_mode` prints one JSON object."""

    def __init__(self, quiet: bool = False, json_mode: bool = False):
        self.quiet = quiet or json_mode
        self.json_mode = json_mode
        self.out = Console(highlight=False)
        self.err = Console(stderr=True, highlight=False)

    def info(self, msg: str) -> None:
        if not self.quiet:
            self.err.print(msg)

    def error(self, msg: str) -> None:
        self.err.print(f"[bold red]error:[/] {msg}", soft_wrap=True)

    def table(self, title: str, columns: list[str], rows: list[list]) -> None:
        if self.json_mode:
            return
        t = Table(title=title)
        for i, c in enumerate(columns):
            t.add_column(c, no_wrap=i == 0)  # row names stay whole (they are copied as args)
        for r in rows:
            t.add_row(*[fmt(v) for v in r])
        self.out.print(t)

    def text(self, s: str) -> None:
        if not self.json_mode:
            self.out.print(s, soft_wrap=True)

    def json(self, obj) -> None:
        if self.json_mode:
            sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")

    @contextmanager
    def progress(self, description: str, total: int):
        """Yields `advance(n, **fields)`; fields (e.g. bpd, img/s) show beside the bar."""
        if self.quiet:
            yield lambda n=1, **kw: None
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
                extra = "  ".join(f"{k} {fmt(v)}" for k, v in kw.items())
                prog.update(task, advance=n, extra=extra)

            yield advance


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)
