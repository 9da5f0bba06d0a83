"""pytest settings for the chapters, which nbval runs (``pytest --nbval-lax book``)."""


def pytest_collection_modifyitems(items):
    for item in items:
        if hasattr(item, "output_timeout"):
            # nbval waits a hard-coded 5 s for a cell's outputs once the cell has finished; on a
            # loaded two-core CI machine one chapter's outputs came later than that (chapter 10,
            # whose cell had finished), and nbval failed the cell. The cell's own time limit
            # (--nbval-cell-timeout) is unchanged.
            item.output_timeout = 60
