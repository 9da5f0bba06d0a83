"""Sliders that work on the published page, without a kernel: every position's figure is drawn
in advance and the page swaps them with a few lines of its own JavaScript (no CDN, no download
at read time). In Jupyter and Colab the chapters still give the live ipywidgets control; this is
what the static page shows in its place."""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import uuid
from collections.abc import Callable, Mapping, Sequence

from .._optional import require

__all__ = ["PrecomputedControls", "precomputed_controls"]

# The page's own script: on every slider's input, show the figure of the current positions.
_SCRIPT = """
(function () {
  var root = document.getElementById(%(id)s);
  var frames = JSON.parse(root.querySelector("script[type='application/json']").textContent);
  var sliders = root.querySelectorAll("input[type=range]");
  var image = root.querySelector("img");
  var caption = root.querySelector(".cxlib-controls-caption");
  function update() {
    var key = [];
    sliders.forEach(function (s) {
      key.push(s.value);
      root.querySelector("[data-value-of='" + s.name + "']").textContent =
        frames.labels[s.name][s.value];
    });
    var frame = frames.frames[key.join(",")];
    image.src = "data:" + frames.mime + ";base64," + frame.png;
    image.title = frame.caption;
    image.alt = frame.caption;
    caption.textContent = frame.caption;
  }
  sliders.forEach(function (s) { s.addEventListener("input", update); });
  update();
})();
"""


class PrecomputedControls:
    """The figures of every slider position, and the HTML that shows them under sliders.

    Built by :func:`precomputed_controls`; shown as HTML in a notebook or a built page, and as
    one line of text elsewhere.

    Attributes:
        names: the controls' names, in slider order.
        values: the values of each control.
        frames: for each combination of value indices (as ``"i,j"``), its image (base64, under
            the key ``"png"`` whatever its format) and caption.
        mime: the images' type, ``"image/png"`` or ``"image/jpeg"``.
    """

    def __init__(self, names: list[str], values: list[list[object]], labels: list[list[str]],
                 frames: dict[str, dict[str, str]], initial: list[int], title: str | None,
                 mime: str = "image/png"):
        self.names, self.values, self.labels, self.mime = names, values, labels, mime
        self.frames, self.initial, self.title = frames, initial, title

    @property
    def size_bytes(self) -> int:
        """What the figures add to the page, in bytes (their base64 text)."""
        return sum(len(f["png"]) + len(f["caption"]) for f in self.frames.values())

    def __repr__(self) -> str:
        counts = " x ".join(f"{len(v)} {n}" for n, v in zip(self.names, self.values))
        return f"<precomputed controls: {counts} = {len(self.frames)} figures>"

    def _repr_html_(self) -> str:
        element_id = f"cxlib-controls-{uuid.uuid4().hex[:12]}"
        first = self.frames[",".join(map(str, self.initial))]
        rows = []
        for k, name in enumerate(self.names):
            rows.append(
                '<label style="display:flex;align-items:center;gap:0.6em;margin:0.2em 0">'
                f'<span style="min-width:5em">{html.escape(name)}</span>'
                f'<input type="range" name="{html.escape(name, quote=True)}" min="0" '
                f'max="{len(self.values[k]) - 1}" step="1" value="{self.initial[k]}" '
                'style="width:16em">'
                f'<b data-value-of="{html.escape(name, quote=True)}"></b></label>')
        data = json.dumps({"labels": {n: lab for n, lab in zip(self.names, self.labels)},
                           "frames": self.frames, "mime": self.mime})
        data = data.replace("</", "<\\/")  # nothing in it may close the script element
        title = (f'<div style="font-weight:bold;margin-bottom:0.2em">{html.escape(self.title)}'
                 "</div>" if self.title else "")
        return (
            f'<div class="cxlib-controls" id="{element_id}" '
            'style="border:1px solid #ddd;border-radius:4px;padding:0.5em 0.8em;margin:0.5em 0">'
            f"{title}{''.join(rows)}"
            # The starting figure is in the HTML itself: without JavaScript the page still
            # shows it.
            f'<img style="max-width:100%;display:block;margin-top:0.4em" '
            f'src="data:{self.mime};base64,{first["png"]}" alt="{html.escape(first["caption"], quote=True)}">'
            '<div class="cxlib-controls-caption" style="font-size:0.9em;color:#444">'
            f'{html.escape(first["caption"])}</div>'
            f'<script type="application/json">{data}</script>'
            f"<script>{_SCRIPT % {'id': json.dumps(element_id)}}</script></div>"
        )


def precomputed_controls(draw: Callable[..., str | None], controls: Mapping[str, Sequence[object]],
                         *, initial: Mapping[str, object] | None = None,
                         figsize: tuple[float, float] = (8.0, 3.2), dpi: int = 72,
                         title: str | None = None, image_format: str = "png",
                         label: Callable[[object], str] = lambda v: f"{v:g}" if isinstance(v, float) else str(v),
                         ) -> PrecomputedControls:
    """Draw the figure of every combination of the controls' values, for sliders on the page.

    Args:
        draw: ``draw(fig, **values)`` draws into the empty matplotlib figure ``fig`` for one
            position of every control and returns the caption to show under it (and on hover:
            the values worth reading off), or ``None``.
        controls: each control's name and the values its slider steps through (at least one).
        initial: the starting value of each control (one of its values); the first by default.
        figsize: the figure's size in inches.
        dpi: the figures' resolution (the page's weight grows with its square).
        title: a line above the sliders, or ``None``.
        image_format: ``"png"`` (exact colours: plots and matrices) or ``"jpeg"`` (photographs,
            several times smaller).
        label: how a value is written next to its slider.

    Returns:
        A :class:`PrecomputedControls`: shown as HTML, it is the sliders and the figure.

    Raises:
        ValueError: if a control has no values, an initial value is not among its values, or
            ``image_format`` is not ``"png"`` or ``"jpeg"``.

    Example:
        >>> from cxlib.book import precomputed_controls
        >>> def draw(fig, h):
        ...     fig.add_subplot().plot([0, 1], [0, h])
        ...     return f"slope {h}"
        >>> controls = precomputed_controls(draw, {"h": [0.5, 1.0]}, initial={"h": 1.0})
        >>> sorted(controls.frames), controls.frames["1"]["caption"]
        (['0', '1'], 'slope 1.0')
        >>> 'type="range"' in controls._repr_html_()
        True
    """
    plt = require("matplotlib.pyplot", extra="book", purpose="precomputed_controls")
    if image_format not in ("png", "jpeg"):
        raise ValueError(f"image_format: expected 'png' or 'jpeg', got {image_format!r}")
    names = list(controls)
    values = [list(controls[name]) for name in names]
    for name, options in zip(names, values):
        if not options:
            raise ValueError(f"control {name!r}: expected at least one value, got none")
    initial = dict(initial or {})
    start = []
    for name, options in zip(names, values):
        if name in initial:
            if initial[name] not in options:
                raise ValueError(f"initial value of {name!r}: expected one of {options}, "
                                 f"got {initial[name]!r}")
            start.append(options.index(initial[name]))
        else:
            start.append(0)
    frames = {}
    for indices in itertools.product(*(range(len(v)) for v in values)):
        fig = plt.figure(figsize=figsize)
        try:
            caption = draw(fig, **{n: values[k][i] for k, (n, i) in enumerate(zip(names, indices))})
            buffer = io.BytesIO()
            fig.savefig(buffer, format=image_format, dpi=dpi, bbox_inches="tight")
        finally:
            plt.close(fig)
        frames[",".join(map(str, indices))] = {
            "png": base64.b64encode(buffer.getvalue()).decode(), "caption": caption or ""}
    labels = [[label(v) for v in options] for options in values]
    return PrecomputedControls(names, values, labels, frames, start, title,
                               mime=f"image/{image_format}")
