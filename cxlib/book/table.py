"""A small table for the chapters: an HTML table on the page (it wraps to the page's width,
where printed columns run off its edge) and aligned text everywhere else."""

from __future__ import annotations

import html
from collections.abc import Sequence

Cell = object


class Table:
    """Rows of cells under a header, shown as HTML in a notebook or a built page.

    Args:
        header: the column titles.
        rows: one sequence of cells per row, each as long as ``header``. Strings are shown as
            they are; numbers with ``formats``.
        formats: a format spec per column (``"{:.2f}"``), or one for every numeric column;
            ``None`` shows numbers with ``str``.
        caption: a line under the table (what the numbers are), or ``None``.

    Raises:
        ValueError: if a row has another number of cells than the header, or ``formats`` is a
            sequence of another length.

    Example:
        >>> from cxlib.book import Table
        >>> table = Table(["loss", "ratio"], [["L1", 0.5], ["Gram", 1.25]], formats="{:.2f}")
        >>> print(table)
        loss  ratio
          L1   0.50
        Gram   1.25
        >>> ">1.25</td>" in table._repr_html_()
        True
    """

    def __init__(self, header: Sequence[str], rows: Sequence[Sequence[Cell]], *,
                 formats: str | Sequence[str | None] | None = None,
                 caption: str | None = None) -> None:
        self.header = [str(h) for h in header]
        width = len(self.header)
        if isinstance(formats, str) or formats is None:
            column_formats: list[str | None] = [formats] * width
        else:
            column_formats = list(formats)
            if len(column_formats) != width:
                raise ValueError(f"formats: expected {width} entries, one per column, "
                                 f"got {len(column_formats)}")
        self.rows: list[list[str]] = []
        for k, row in enumerate(rows):
            cells = list(row)
            if len(cells) != width:
                raise ValueError(f"row {k}: expected {width} cells (the header's), "
                                 f"got {len(cells)}")
            self.rows.append([_format(c, f) for c, f in zip(cells, column_formats)])
        self.caption = caption

    def __repr__(self) -> str:
        widths = [max(len(r[k]) for r in [self.header, *self.rows]) for k in range(len(self.header))]
        lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)).rstrip()
                 for row in [self.header, *self.rows]]
        if self.caption:
            lines.append(self.caption)
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        # Inline styles: the same spacing in the built page, Jupyter and Colab, whose style
        # sheets differ. Numbers are right-aligned, the first column (names) left.
        cell = "padding:0.2em 0.6em;border:none;white-space:nowrap;text-align:{}"
        def row_html(cells: list[str], tag: str) -> str:
            return "<tr>" + "".join(
                f'<{tag} style="{cell.format("left" if k == 0 else "right")}">'
                f"{html.escape(c)}</{tag}>" for k, c in enumerate(cells)) + "</tr>"
        head = row_html(self.header, "th")
        body = "".join(row_html(row, "td") for row in self.rows)
        caption = (f'<caption style="caption-side:bottom;font-size:0.9em;padding-top:0.3em">'
                   f"{html.escape(self.caption)}</caption>" if self.caption else "")
        return ('<table class="cxlib-table" style="border-collapse:collapse;margin:0.5em 0;width:auto;font-size:0.9em">'
                f'{caption}<thead style="border-bottom:1px solid #999">{head}</thead>'
                f"<tbody>{body}</tbody></table>")


def _format(cell: Cell, spec: str | None) -> str:
    if isinstance(cell, str) or spec is None or isinstance(cell, bool):
        return str(cell)
    return spec.format(cell)
