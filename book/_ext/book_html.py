"""Sphinx extension of the book: no Colab badge on the book's own pages.

Each notebook opens with an "Open in Colab" badge for readers who meet it on GitHub or in
Colab. On the book's pages the header's launch button opens the same notebook, and the badge,
an image on Google's server, would be the only thing a page loads from another server. So the
badge (its link and image) is left out of the HTML; the notebooks keep it.
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


def setup(app):
    # Before Sphinx collects the page's images (priority 500), so the remote one is not listed.
    app.connect("doctree-read", drop_colab_badges, priority=400)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
