"""The report document: Markdown and HTML side by side, figures, skipped sections, summary.json."""

from __future__ import annotations

import html
import json
import math
import os
import pathlib
from typing import Any

import numpy as np
import pandas as pd

from analysis import plots

__all__ = ["ReportDoc", "markdown_table"]


def markdown_table(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """Returns df as a GitHub-flavoured Markdown table (numbers formatted with floatfmt)."""
    def fmt(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return "nan" if not math.isfinite(v) else format(float(v), floatfmt)
        return str(v).replace("|", "\\|")
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(lines)


class ReportDoc:
    """A report being written into out_dir: headings, paragraphs, tables, figures, skipped sections."""

    def __init__(self, out_dir: pathlib.Path):
        self.out = out_dir
        self.fig_dir = out_dir / "figures"
        self.md: list[str] = []
        self.html: list[str] = []
        self.skipped: list[tuple[str, str]] = []
        self.figures: list[str] = []
        self.summary: dict[str, Any] = {}

    def h(self, text: str, level: int = 2) -> None:
        """Appends a heading (returns None)."""
        self.md.append(f"\n{'#' * level} {text}\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def p(self, text: str) -> None:
        """Appends a paragraph (returns None)."""
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, df: pd.DataFrame) -> None:
        """Appends a table (returns None)."""
        self.md.append(markdown_table(df) + "\n")
        self.html.append(df.to_html(index=False, float_format=lambda v: format(v, ".4g"), border=0,
                                    classes="tbl"))

    def figure(self, fig: Any, name: str, caption: str) -> None:
        """Saves fig as figures/<name>.png|pdf and appends it with its caption (returns None)."""
        paths = plots.save_figure(fig, self.fig_dir / name)
        rel_png = os.path.relpath(paths[0], self.out)
        rel_pdf = os.path.relpath(paths[1], self.out)
        self.figures.append(name)
        self.md.append(f"![{caption}]({rel_png})\n\n*{caption}* ([PDF]({rel_pdf}))\n")
        self.html.append(f'<figure><img src="{html.escape(rel_png)}" alt="{html.escape(caption)}" '
                         f'style="max-width:100%"><figcaption>{html.escape(caption)} '
                         f'(<a href="{html.escape(rel_pdf)}">PDF</a>)</figcaption></figure>')

    def skip(self, section: str, reason: str) -> None:
        """Records a section that has too little data, with why (listed at the end; returns None)."""
        self.skipped.append((section, reason))

    def finish(self) -> pathlib.Path:
        """Returns the path of report.md after writing it, report.html and summary.json."""
        self.h("Skipped sections")
        if self.skipped:
            self.table(pd.DataFrame(self.skipped, columns=["section", "reason"]))
        else:
            self.p("None: every section had data.")
        self.summary["figures"] = self.figures
        self.summary["skipped"] = [{"section": s, "reason": r} for s, r in self.skipped]
        md_path = self.out / "report.md"
        md_path.write_text("\n".join(self.md), encoding="utf-8")
        style = ("body{font-family:sans-serif;max-width:1000px;margin:auto}"
                 ".tbl{border-collapse:collapse;font-size:12px}.tbl td,.tbl th{padding:2px 6px;"
                 "border-bottom:1px solid #ddd}")
        (self.out / "report.html").write_text(
            f"<!doctype html><html><head><meta charset='utf-8'><title>report</title><style>{style}</style>"
            f"</head><body>{''.join(self.html)}</body></html>", encoding="utf-8")
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=1, default=_json_default),
                                               encoding="utf-8")
        return md_path


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.bool_,)):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
