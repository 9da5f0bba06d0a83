"""cxlib.book.Table: the chapters' tables, as HTML on the page and aligned text elsewhere."""

from __future__ import annotations

import html.parser

import pytest

from cxlib.book import Table


class _Cells(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self._in_cell = [], False

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        self._in_cell = tag in ("td", "th")

    def handle_endtag(self, tag):
        self._in_cell = False

    def handle_data(self, data):
        if self._in_cell:
            self.rows[-1].append(data)


def test_html_holds_every_cell_formatted_and_escaped():
    table = Table(["name", "a<b", "n"], [["x & y", 1.23456, 3], ["z", 2.0, 10]],
                  formats=[None, "{:.2f}", "{:,}"], caption="per unrelated photo")
    parser = _Cells()
    parser.feed(table._repr_html_())
    assert parser.rows == [["name", "a<b", "n"], ["x & y", "1.23", "3"], ["z", "2.00", "10"]]
    assert "per unrelated photo" in table._repr_html_()


def test_text_columns_are_right_aligned_to_the_widest_cell():
    table = Table(["a", "bbbb"], [["long name", 1.5], ["s", 22.31]], formats="{:.1f}")
    lines = repr(table).splitlines()
    assert lines == ["        a  bbbb", "long name   1.5", "        s  22.3"]
    assert len({len(line) for line in lines}) == 1


def test_strings_and_booleans_are_not_formatted_as_numbers():
    table = Table(["k", "v"], [["yes", True]], formats="{:.2f}")
    assert table.rows == [["yes", "True"]]


def test_rows_of_the_wrong_length_are_refused():
    with pytest.raises(ValueError, match=r"row 1: expected 2 cells \(the header's\), got 3"):
        Table(["a", "b"], [[1, 2], [1, 2, 3]])
    with pytest.raises(ValueError, match="formats: expected 2 entries, one per column, got 1"):
        Table(["a", "b"], [[1, 2]], formats=["{:.1f}"])
