"""Sphinx extension of the book: two fixes to the HTML that Jupyter Book 1 writes.

- No Colab badge on the book's own pages. Each notebook opens with an "Open in Colab" badge for
  readers who meet it on GitHub or in Colab. On the book's pages the header's launch button
  opens the same notebook, and the badge, an image on Google's server, would be the only thing a
  page loads from another server. So the badge (its link and image) is left out of the HTML;
  the notebooks keep it.
- No script twice. With Sphinx 7 an inline script added by an extension (sphinx-thebe's
  ``const THEBE_JS_URL = ...``) is written twice into every page, once with the file name
  ``None`` and once with ``''``, and the second ``const`` is a JavaScript error in the reader's
  console (fixed in Sphinx 8.2, which Jupyter Book 1 does not use). Duplicates are dropped
  when a page is written.
"""

from __future__ import annotations

from docutils import nodes

COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"


def drop_colab_badges(app, doctree: nodes.document) -> None:
    for image in list(doctree.findall(nodes.image)):
        if image.get("uri") != COLAB_BADGE:
            continue
        badge = image.parent if isinstance(image.parent, nodes.reference) else image
        holder = badge.parent
        holder.remove(badge)
        if isinstance(holder, nodes.paragraph) and not holder.astext().strip():
            holder.parent.remove(holder)


def _script_key(script) -> tuple:
    filename = getattr(script, "filename", script) or ""
    attributes = getattr(script, "attributes", {}) or {}
    return str(filename), tuple(sorted((k, str(v)) for k, v in attributes.items()))


def drop_duplicate_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"] = kept


def setup(app):
    # Before Sphinx collects the page's images (priority 500), so the remote one is not listed.
    app.connect("doctree-read", drop_colab_badges, priority=400)
    # After the themes and extensions have added their scripts to the page's context.
    app.connect("html-page-context", drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
