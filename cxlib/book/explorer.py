"""Chapter 2's small example computed in the reader's browser: 2-D points to drag, sliders for
h and eps, and Eqs. 1-5 (cosine distance, as cxlib computes it) evaluated by the page's own
JavaScript, so the matrix CX_ij and CX(X, Y) are redrawn as the points move, with no kernel
and nothing fetched."""

from __future__ import annotations

import html
import json
import uuid
from collections.abc import Sequence

__all__ = ["PointsExplorer", "points_explorer"]

# Eqs. 1-5 as cxlib computes them for distance="cosine": centre both sets by the targets' mean,
# L2-normalise (a point at the mean has no direction: it maps to 0), d = 1 - x.y, the row minimum
# clamped at 0, d~ = d / (min + eps), w = exp((1 - d~) / h) normalised per row (a softmax, with
# its largest logit subtracted as torch does), CX = mean over j of max over i.
_SCRIPT = r"""
(function () {
  var root = document.getElementById(%(id)s);
  var state = JSON.parse(root.querySelector("script[type='application/json']").textContent);
  var svg = root.querySelector("svg"), size = state.size, pad = 24;
  var lo = state.lo, hi = state.hi;
  function toScreen(p) { return [pad + (p[0] - lo[0]) / (hi[0] - lo[0]) * (size - 2 * pad),
                                 size - pad - (p[1] - lo[1]) / (hi[1] - lo[1]) * (size - 2 * pad)]; }
  function fromScreen(u, v) { return [lo[0] + (u - pad) / (size - 2 * pad) * (hi[0] - lo[0]),
                                      lo[1] + (size - pad - v) / (size - 2 * pad) * (hi[1] - lo[1])]; }
  function similarity(X, Y, h, eps) {
    var mu = [0, 0];
    Y.forEach(function (y) { mu[0] += y[0] / Y.length; mu[1] += y[1] / Y.length; });
    function unit(p) {
      var a = p[0] - mu[0], b = p[1] - mu[1], n = Math.sqrt(a * a + b * b);
      n = Math.max(n, 1e-12);
      return [a / n, b / n];
    }
    var xn = X.map(unit), yn = Y.map(unit), cx = [];
    xn.forEach(function (x) {
      var d = yn.map(function (y) { return 1 - (x[0] * y[0] + x[1] * y[1]); });
      var den = Math.max(Math.min.apply(null, d), 0) + eps;
      var logits = d.map(function (v) { return (1 - v / den) / h; });
      var top = Math.max.apply(null, logits);
      var w = logits.map(function (l) { return Math.exp(l - top); });
      var sum = w.reduce(function (a, b) { return a + b; }, 0);
      cx.push(w.map(function (v) { return v / sum; }));
    });
    var best = Y.map(function (_, j) {
      return Math.max.apply(null, cx.map(function (row) { return row[j]; }));
    });
    var score = best.reduce(function (a, b) { return a + b; }, 0) / Y.length;
    return {cx: cx, best: best, score: score};
  }
  function draw() {
    var h = Math.pow(10, parseFloat(root.querySelector("input[name=log10_h]").value));
    var eps = Math.pow(10, parseFloat(root.querySelector("input[name=log10_eps]").value));
    var r = similarity(state.x, state.y, h, eps);
    root.querySelector("[data-value-of=log10_h]").textContent = h.toPrecision(3);
    root.querySelector("[data-value-of=log10_eps]").textContent = eps.toExponential(0);
    var cells = root.querySelectorAll("td[data-i]");
    cells.forEach(function (td) {
      var v = r.cx[+td.dataset.i][+td.dataset.j];
      td.dataset.value = v.toPrecision(12);
      td.textContent = v.toFixed(3);
      var shade = Math.round(255 * (1 - v));
      td.style.background = "rgb(" + shade + "," + shade + ",255)";
      td.style.color = v > 0.5 ? "white" : "black";
    });
    var score = root.querySelector(".cxlib-explorer-score");
    score.dataset.value = r.score.toPrecision(12);
    score.textContent = r.score.toFixed(4) + " (loss -log CX = " + (-Math.log(r.score)).toFixed(4) + ")";
    ["x", "y"].forEach(function (kind) {
      state[kind].forEach(function (p, k) {
        var s = toScreen(p), g = svg.querySelector("[data-kind=" + kind + "][data-k='" + k + "']");
        g.setAttribute("transform", "translate(" + s[0] + "," + s[1] + ")");
      });
    });
    root.dataset.points = JSON.stringify({x: state.x, y: state.y, h: h, eps: eps});
  }
  var dragging = null;
  svg.querySelectorAll("g[data-kind]").forEach(function (g) {
    g.addEventListener("pointerdown", function (e) { dragging = g; g.setPointerCapture(e.pointerId); });
  });
  svg.addEventListener("pointermove", function (e) {
    if (!dragging) return;
    var box = svg.getBoundingClientRect();
    var p = fromScreen((e.clientX - box.left) * size / box.width, (e.clientY - box.top) * size / box.height);
    state[dragging.dataset.kind][+dragging.dataset.k] = p;
    draw();
  });
  svg.addEventListener("pointerup", function () { dragging = null; });
  root.querySelectorAll("input[type=range]").forEach(function (s) { s.addEventListener("input", draw); });
  // For tests and for readers who type: set every point and both controls at once.
  root.cxlibSet = function (x, y, log10_h, log10_eps) {
    state.x = x; state.y = y;
    root.querySelector("input[name=log10_h]").value = log10_h;
    root.querySelector("input[name=log10_eps]").value = log10_eps;
    draw();
  };
  draw();
})();
"""


class PointsExplorer:
    """The HTML of the in-page explorer; built by :func:`points_explorer`.

    Shown in a notebook or a built page, it draws the points and computes the contextual
    similarity in the page's JavaScript, so it works without a kernel.

    Args:
        x: the generated points, each ``[a, b]``.
        y: the target points.
        log10_h: the starting band width, as its base-10 logarithm.
        log10_eps: the starting eps, as its base-10 logarithm.
        size: the side of the drawing, in pixels.

    Example:
        >>> from cxlib.book.explorer import PointsExplorer
        >>> PointsExplorer([[1.0, 3.0]], [[1.0, 2.5], [3.5, 1.0]], -0.3, -5.0, 300)
        <points explorer: 1 generated and 2 target points, h = 0.501187, eps = 1e-05>
    """

    def __init__(self, x: list[list[float]], y: list[list[float]], log10_h: float,
                 log10_eps: float, size: int):
        self.x, self.y, self.log10_h, self.log10_eps, self.size = x, y, log10_h, log10_eps, size

    def __repr__(self) -> str:
        return (f"<points explorer: {len(self.x)} generated and {len(self.y)} target points, "
                f"h = {10 ** self.log10_h:g}, eps = {10 ** self.log10_eps:g}>")

    def _repr_html_(self) -> str:
        element_id = f"cxlib-explorer-{uuid.uuid4().hex[:12]}"
        points = self.x + self.y
        lo = [min(p[0] for p in points) - 0.5, min(p[1] for p in points) - 0.5]
        hi = [max(p[0] for p in points) + 0.5, max(p[1] for p in points) + 0.5]
        span = max(hi[0] - lo[0], hi[1] - lo[1])  # the same scale on both axes
        hi = [lo[0] + span, lo[1] + span]
        markers = []
        for kind, colour, shape in (("x", "#1f77b4", "circle"), ("y", "#ff7f0e", "rect")):
            for k in range(len(self.x if kind == "x" else self.y)):
                body = ('<circle r="7"' if shape == "circle" else '<rect x="-7" y="-7" width="14" height="14"')
                markers.append(
                    f'<g data-kind="{kind}" data-k="{k}" style="cursor:grab">{body} fill="{colour}"/>'
                    f'<text x="9" y="-9" font-size="12" fill="{colour}">{kind}{k + 1}</text></g>')
        header = "".join(f"<th>y{j + 1}</th>" for j in range(len(self.y)))
        rows = "".join(
            f"<tr><th>x{i + 1}</th>"
            + "".join(f'<td data-i="{i}" data-j="{j}" style="padding:0.2em 0.5em;text-align:right"></td>'
                      for j in range(len(self.y))) + "</tr>" for i in range(len(self.x)))
        data = json.dumps({"x": self.x, "y": self.y, "size": self.size, "lo": lo, "hi": hi})

        def slider(name: str, label: str, low: float, high: float, value: float) -> str:
            return (f'<label style="display:flex;gap:0.6em;align-items:center">'
                    f'<span style="min-width:3em">{html.escape(label)}</span>'
                    f'<input type="range" name="{name}" min="{low}" max="{high}" step="0.05" '
                    f'value="{value}" style="width:12em"><b data-value-of="{name}"></b></label>')

        return (
            f'<div class="cxlib-explorer" id="{element_id}" style="display:flex;flex-wrap:wrap;'
            'gap:1em;align-items:flex-start;border:1px solid #ddd;border-radius:4px;padding:0.6em">'
            f'<svg viewBox="0 0 {self.size} {self.size}" width="{self.size}" height="{self.size}" '
            'style="border:1px solid #eee;touch-action:none;max-width:100%">'
            f'{"".join(markers)}</svg><div>'
            f'{slider("log10_h", "h", -2, 1, self.log10_h)}'
            f'{slider("log10_eps", "eps", -8, -1, self.log10_eps)}'
            '<table style="border-collapse:collapse;margin-top:0.5em;width:auto">'
            f"<caption style='caption-side:top;text-align:left'>CX<sub>ij</sub> (rows sum to 1)</caption>"
            f"<tr><th></th>{header}</tr>{rows}</table>"
            '<div style="margin-top:0.4em">CX(X, Y) = <b class="cxlib-explorer-score"></b></div>'
            '<div style="font-size:0.85em;color:#555">Drag the points; computed in this page.</div>'
            f'</div><script type="application/json">{data}</script>'
            f"<script>{_SCRIPT % {'id': json.dumps(element_id)}}</script></div>"
        )


def points_explorer(x: Sequence[Sequence[float]], y: Sequence[Sequence[float]], *,
                    band_width: float = 0.5, eps: float = 1e-5, size: int = 300) -> PointsExplorer:
    """An explorer of the contextual similarity of a few 2-D points, computed in the page.

    Args:
        x: the generated points, each ``(a, b)``.
        y: the target points.
        band_width: the starting h (the slider covers 0.01 to 10).
        eps: the starting eps (the slider covers 1e-8 to 0.1).
        size: the side of the drawing, in pixels.

    Returns:
        A :class:`PointsExplorer`, shown as HTML (points to drag, two sliders, the matrix and
        the score, all computed by the page's JavaScript with distance="cosine").

    Raises:
        ValueError: if a point is not two numbers, or a set is empty.

    Example:
        >>> from cxlib.book import points_explorer
        >>> explorer = points_explorer([[1, 3], [3, 1]], [[1, 2.5], [3.5, 1]])
        >>> 'class="cxlib-explorer"' in explorer._repr_html_()
        True
    """
    import math

    def points(name: str, values: Sequence[Sequence[float]]) -> list[list[float]]:
        out = [[float(v) for v in p] for p in values]
        if not out or any(len(p) != 2 for p in out):
            raise ValueError(f"{name}: expected a non-empty list of 2-D points, got {values!r}")
        return out

    return PointsExplorer(points("x", x), points("y", y), math.log10(band_width),
                          math.log10(eps), size)
