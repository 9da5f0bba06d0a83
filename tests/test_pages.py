"""The built book, opened page by page in a real browser (Debian's Chromium, driven by Playwright).

Run after ``bash scripts/build-book`` (``scripts/test`` does): ``pytest -m pages tests/test_pages.py``.
Every page of the table of contents is served from ``_build/html`` on localhost (or from
``$CXLIB_BOOK_HTML``) and fails on: a JavaScript error in the console, a request that failed or
that left the machine, an image that did not load, a formula MathJax did not render (raw ``$$``,
``\\(`` or ``\\[`` left in the text) or cut off at the column's edge, a widget cell without its
static fallback figure, a Colab button that does not open this chapter's notebook in the
configured repository and branch, a page wider than a 1280-pixel window, or a chapter without
its "Made with" line near the top.
It saves a full-page screenshot per page under ``_build/screenshots/`` for a person to look at.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
HTML = Path(os.environ.get("CXLIB_BOOK_HTML", ROOT / "_build" / "html"))
SCREENSHOTS = ROOT / "_build" / "screenshots"
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
WIDTH, HEIGHT = 1280, 900
# The "Made with" line must start within this many pixels of the top of a chapter page.
PROVENANCE_WITHIN = 1400

pytestmark = pytest.mark.pages


def _pages() -> list[str]:
    names = [TOC["root"]]
    for part in TOC["parts"]:
        names += [chapter["file"] for chapter in part["chapters"]]
    return names


def _is_chapter(name: str) -> bool:
    return (ROOT / f"{name}.ipynb").is_file()


def _unavailable(reason: str):
    if os.environ.get("CXLIB_REQUIRE_TOOLS") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _chromium() -> str | None:
    candidates = [os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome",
                  "google-chrome-stable"]
    for candidate in filter(None, candidates):
        found = shutil.which(candidate)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def site():
    if not (HTML / "index.html").is_file():
        _unavailable(f"no built book at {HTML}: run `bash scripts/build-book` first")
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    if executable is None:
        _unavailable("no Chromium: install Debian's package `chromium` (or set CHROMIUM=/path)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install playwright; no browser download needed)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"],
        )
        yield browser
        browser.close()


def _open(browser, site, name):
    """The page, loaded and typeset, with what went wrong while loading it."""
    page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
    problems = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} ({r.failure})"))

    def only_this_machine(route):
        if route.request.url.startswith(site) or route.request.url.startswith("data:"):
            route.continue_()
        else:  # a published page must not depend on another server to be read
            problems.append(f"request to another server: {route.request.url}")
            route.abort()

    page.route("**/*", only_this_machine)
    page.goto(f"{site}/{name}.html", wait_until="load")
    # Scroll through the page so that anything loaded lazily is loaded, then wait for MathJax.
    page.evaluate("""async () => {
        for (let y = 0; y < document.body.scrollHeight; y += 700) {
            window.scrollTo(0, y); await new Promise(r => setTimeout(r, 20));
        }
        window.scrollTo(0, 0);
        if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
            await MathJax.startup.promise;
        }
    }""")
    page.wait_for_load_state("networkidle")
    return page, problems


@pytest.mark.parametrize("name", _pages())
def test_page_in_a_browser(browser, site, name):
    page, problems = _open(browser, site, name)
    try:
        broken = page.evaluate("""() => [...document.images]
            .filter(img => !(img.complete && img.naturalWidth > 0))
            .map(img => img.getAttribute('src'))""")
        assert not broken, f"images that did not load: {broken}"

        # Formulas: text outside code and outside MathJax's output must hold no TeX delimiters.
        raw = page.evaluate("""() => {
            const article = document.querySelector('article') || document.body;
            const copy = article.cloneNode(true);
            copy.querySelectorAll('pre, code, mjx-container, script, .MathJax').forEach(e => e.remove());
            const text = copy.textContent;
            return ['$$', '\\\\(', '\\\\[', '\\\\begin{'].filter(d => text.includes(d));
        }""")
        assert not raw, f"formulas left unrendered (raw {raw} in the text)"
        source = _source_text(name)
        if "$" in source or ":math:" in source or "{math}" in source:
            typeset = page.evaluate("() => document.querySelectorAll('mjx-container').length")
            assert typeset > 0, "the page has formulas but MathJax rendered none"
        clipped = page.evaluate("""() => [...document.querySelectorAll('mjx-container[display="true"]')]
            .filter(m => m.scrollWidth > m.clientWidth + 2).map(m => m.textContent.slice(0, 60))""")
        assert not clipped, f"display formulas wider than the text, cut off: {clipped}"

        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= WIDTH, f"the page is {width} px wide in a {WIDTH} px window"

        if _is_chapter(name):
            _check_chapter(page, name)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{Path(name).name}.png"), full_page=True)
        assert not problems, "\n".join(problems)
    finally:
        page.close()


def _source_text(name: str) -> str:
    for ext in (".md", ".ipynb"):
        path = ROOT / f"{name}{ext}"
        if path.is_file():
            if ext == ".md":
                return path.read_text()
            cells = json.loads(path.read_text())["cells"]
            return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    raise FileNotFoundError(name)


def _check_chapter(page, name):
    owner_repo = CONFIG["repository"]["url"].removeprefix("https://github.com/")
    branch = CONFIG["repository"]["branch"]
    want = f"https://colab.research.google.com/github/{owner_repo}/blob/{branch}/{name}.ipynb"
    colab = page.evaluate("""() => [...document.querySelectorAll('a[href*="colab.research.google.com"]')]
        .filter(a => a.closest('.article-header-buttons, .header-article-items, .bd-header-article'))
        .map(a => a.href)""")
    assert colab, "no Colab launch button in the page's header"
    assert set(colab) == {want}, f"Colab button opens {colab}, expected {want}"

    line = page.evaluate("""() => {
        const el = document.querySelector('.cx-provenance');
        if (!el) return null;
        const box = el.getBoundingClientRect();
        return {text: el.textContent, top: box.top + window.scrollY, height: box.height};
    }""")
    assert line is not None, "the chapter does not say how it was made (.cx-provenance)"
    for part in ("setting", "device", "VGG19 weights", "cxlib", "date"):
        assert part in line["text"], f"the 'Made with' line lacks {part}: {line['text']}"
    assert line["height"] > 0, "the 'Made with' line is hidden"
    assert line["top"] < PROVENANCE_WITHIN, f"the 'Made with' line is {line['top']:.0f} px down the page"

    fallbacks = page.evaluate("""() => [...document.querySelectorAll('.cell.tag_widget')].map(cell => {
        let next = cell.nextElementSibling;
        while (next && !next.classList.contains('cell')) next = next.nextElementSibling;
        if (!next || !next.classList.contains('tag_static-fallback')) return 'missing';
        const img = next.querySelector('img');
        return img && img.complete && img.naturalWidth > 0 ? 'ok' : 'no figure';
    })""")
    assert all(f == "ok" for f in fallbacks), f"widget cells and their static fallbacks: {fallbacks}"
    if name == "book/02_contextual_similarity":
        assert fallbacks == ["ok"], "the bandwidth sliders' static figure is missing"


# Pages whose sliders must work without a kernel (cxlib.book.precomputed_controls).
CONTROL_PAGES = ["book/01_alignment", "book/02_contextual_similarity", "book/03_extreme_cases", "book/04_denoising",
                 "book/10_bilateral", "book/11_in_practice"]
PAGE_LIMIT_BYTES = 2 * 2**20


@pytest.mark.parametrize("name", CONTROL_PAGES)
def test_precomputed_sliders_work_on_the_page(browser, site, name):
    """Every slider of the page's precomputed controls, moved to each end, changes the figure
    and its caption, with no console error; screenshots of the first slider at both ends go to
    _build/screenshots/. The page stays under 2 MB."""
    size = (HTML / f"{name}.html").stat().st_size
    assert size < PAGE_LIMIT_BYTES, f"{name}.html is {size / 2**20:.2f} MiB"
    page, problems = _open(browser, site, name)
    try:
        count = page.evaluate("() => document.querySelectorAll('.cxlib-controls').length")
        assert count >= 1, "no precomputed controls on the page"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for c in range(count):
            controls = page.locator(".cxlib-controls").nth(c)
            sliders = controls.locator("input[type=range]")
            for s in range(sliders.count()):
                slider = sliders.nth(s)
                seen = []
                for end in (slider.get_attribute("min"), slider.get_attribute("max")):
                    slider.evaluate("(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }",
                                    end)
                    seen.append((controls.locator("img").get_attribute("src"),
                                 controls.locator(".cxlib-controls-caption").text_content()))
                    if c == 0 and s == 0:
                        controls.screenshot(path=str(SCREENSHOTS / f"{Path(name).name}-slider-{end}.png"))
                assert seen[0][0] != seen[1][0], f"slider {s} of controls {c}: the figure did not change"
                assert seen[0][1] != seen[1][1], f"slider {s} of controls {c}: the caption did not change"
                assert seen[1][0].startswith(("data:image/png;base64,", "data:image/jpeg;base64,"))
        assert not problems, "\n".join(problems)
    finally:
        page.close()


# (x, y, log10 h, log10 eps). Four generated and four target points (the chapter's count): the
# chapter's own, a spread with a large eps, and one with exact copies (d = 0) and the smallest eps.
EXPLORER_CONFIGURATIONS = [
    ([[1.1, 3.2], [3.1, 3.3], [2.2, 0.7], [3.0, 1.0]], [[1, 3], [3, 3.6], [2, 1], [4, 1.4]], -0.3, -5),
    ([[0.0, 0.0], [1.0, 0.2], [0.3, 1.0], [0.7, 0.6]], [[0.0, 0.1], [1.0, 0.0], [0.5, 0.5], [0.2, 0.9]], -1.0, -2),
    ([[2.0, 2.0], [1.0, 3.0], [0.0, 1.0], [2.5, 0.5]], [[2.0, 2.0], [1.0, 3.0], [0.5, 1.0], [3.0, 0.0]], 0.0, -8),
    # Points 1e-3 from their targets: d ~ 1e-7, so eps decides Eq. 2's denominator.
    ([[1.0, 3.001], [3.0, 3.601], [2.001, 1.0], [4.0, 1.401]], [[1, 3], [3, 3.6], [2, 1], [4, 1.4]], -0.3, -6),
]


def _explorer_matches_cxlib(page, root_selector: str):
    """Set known configurations in the explorer and compare its numbers with cxlib's."""
    import torch

    import cxlib

    for x, y, log10_h, log10_eps in EXPLORER_CONFIGURATIONS:
        page.evaluate("([sel, x, y, lh, le]) => document.querySelector(sel).cxlibSet(x, y, lh, le)",
                      [root_selector, x, y, log10_h, log10_eps])
        used = page.evaluate("(sel) => JSON.parse(document.querySelector(sel).dataset.points)",
                             root_selector)
        got = page.evaluate("""(sel) => {
            const root = document.querySelector(sel);
            const cells = [...root.querySelectorAll('td[data-i]')].map(td => [+td.dataset.i, +td.dataset.j, +td.dataset.value]);
            return {cells, score: +root.querySelector('.cxlib-explorer-score').dataset.value};
        }""", root_selector)
        xt = torch.tensor(used["x"], dtype=torch.float64).T.reshape(1, 2, 1, -1)
        yt = torch.tensor(used["y"], dtype=torch.float64).T.reshape(1, 2, 1, -1)
        want = cxlib.contextual_matrices(xt, yt, band_width=used["h"], eps=used["eps"])
        for i, j, value in got["cells"]:
            assert abs(value - want.similarity[i, j].item()) < 1e-6, (x, y, i, j, value)
        assert abs(got["score"] - want.score.item()) < 1e-6, (x, y, got["score"], want.score.item())


def test_the_explorer_computes_what_cxlib_computes(browser, tmp_path):
    """Chapter 2's in-page explorer, on its own page: its CX_ij and CX(X, Y) equal cxlib's to
    1e-6 for known configurations, with no console error."""
    from cxlib.book import points_explorer

    path = tmp_path / "explorer.html"
    path.write_text("<!doctype html><html><body>"
                    + points_explorer([[1, 3], [3, 1], [2, 2], [0, 1]], [[1, 2.5], [3.5, 1], [2, 2.5], [0.5, 0]])._repr_html_()
                    + "</body></html>")
    page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(path.as_uri())
        _explorer_matches_cxlib(page, ".cxlib-explorer")
        assert not errors, errors
    finally:
        page.close()


def test_the_explorer_on_chapter_2_works(browser, site):
    page, problems = _open(browser, site, "book/02_contextual_similarity")
    try:
        assert page.evaluate("() => document.querySelectorAll('.cxlib-explorer').length") == 1
        _explorer_matches_cxlib(page, ".cxlib-explorer")
        # Dragging a point moves it and changes the score, from the chapter's own points: in the
        # last configuration above each x lies 1e-3 from its y, whose marker covers it, so the
        # mouse took y_1 (the score stayed 1 to 11 digits).
        page.evaluate("([sel, x, y, lh, le]) => document.querySelector(sel).cxlibSet(x, y, lh, le)",
                      [".cxlib-explorer", *EXPLORER_CONFIGURATIONS[0]])
        before = page.evaluate("() => document.querySelector('.cxlib-explorer-score').dataset.value")
        marker = page.locator(".cxlib-explorer g[data-kind=x]").first
        marker.scroll_into_view_if_needed()
        box = marker.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(box["x"] + 60, box["y"] + 40, steps=5)
        page.mouse.up()
        after = page.evaluate("() => document.querySelector('.cxlib-explorer-score').dataset.value")
        assert before != after, "dragging a point did not change CX(X, Y)"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.locator(".cxlib-explorer").screenshot(path=str(SCREENSHOTS / "02-explorer.png"))
        assert not problems, "\n".join(problems)
    finally:
        page.close()
