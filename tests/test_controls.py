"""cxlib.book.precomputed_controls: every slider position drawn in advance, and the page's own
script that shows them (checked in a browser by tests/test_pages.py)."""

from __future__ import annotations

import base64
import json
import re

import matplotlib
import pytest

matplotlib.use("Agg")

from cxlib.book import precomputed_controls  # noqa: E402


def _draw(fig, h, p):
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, h * p])
    ax.set_ylim(0, 1)  # fixed: different products draw different lines
    return f"h = {h}, p = {p}: product {h * p:.2f}"


def test_every_combination_is_drawn_once_with_its_caption():
    controls = precomputed_controls(_draw, {"h": [0.1, 0.5, 1.0], "p": [0, 1]},
                                    initial={"h": 0.5, "p": 1})
    assert sorted(controls.frames) == [f"{i},{j}" for i in range(3) for j in range(2)]
    assert controls.frames["2,1"]["caption"] == "h = 1.0, p = 1: product 1.00"
    assert controls.frames["0,0"]["caption"] == "h = 0.1, p = 0: product 0.00"
    for frame in controls.frames.values():
        assert base64.b64decode(frame["png"]).startswith(b"\x89PNG")
    # different positions give different figures
    assert len({f["png"] for f in controls.frames.values()}) == 4  # at p = 0 h draws nothing new
    assert controls.initial == [1, 1]
    assert controls.size_bytes == sum(len(f["png"]) + len(f["caption"])
                                      for f in controls.frames.values())


def test_the_html_holds_the_sliders_the_frames_and_no_network():
    controls = precomputed_controls(_draw, {"h": [0.1, 0.5], "p": [0, 1, 2]})
    page = controls._repr_html_()
    sliders = re.findall(r'<input type="range" name="(\w+)" min="0" max="(\d+)"', page)
    assert sliders == [("h", "1"), ("p", "2")]
    data = re.search(r'<script type="application/json">(.*?)</script>', page, re.S).group(1)
    assert json.loads(data)["frames"].keys() == controls.frames.keys()
    assert json.loads(data)["labels"] == {"h": ["0.1", "0.5"], "p": ["0", "1", "2"]}
    assert "http" not in page  # nothing is fetched at read time
    assert repr(controls) == "<precomputed controls: 2 h x 3 p = 6 figures>"


def test_jpeg_frames_for_photographs():
    controls = precomputed_controls(_draw, {"h": [0.1, 0.5], "p": [1]}, image_format="jpeg")
    assert all(base64.b64decode(f["png"]).startswith(b"\xff\xd8") for f in controls.frames.values())
    assert 'src="data:image/jpeg;base64,' in controls._repr_html_()


def test_bad_controls_are_refused():
    with pytest.raises(ValueError, match="image_format: expected 'png' or 'jpeg', got 'gif'"):
        precomputed_controls(_draw, {"h": [1.0], "p": [1]}, image_format="gif")
    with pytest.raises(ValueError, match="control 'h': expected at least one value, got none"):
        precomputed_controls(_draw, {"h": [], "p": [1]})
    with pytest.raises(ValueError, match=r"initial value of 'p': expected one of \[0, 1\], got 3"):
        precomputed_controls(_draw, {"h": [1.0], "p": [0, 1]}, initial={"p": 3})
