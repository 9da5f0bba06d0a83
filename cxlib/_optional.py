"""Optional dependencies: imported when first needed, with an error that names the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["REPOSITORY", "require"]

#: Where cxlib is installed from (it is not on PyPI).
REPOSITORY = "git+https://github.com/cx-book/contextual-loss-book@main"
# Import name -> the distribution pip installs it from, where they differ.
_DISTRIBUTIONS = {"skimage": "scikit-image", "PIL": "pillow", "IPython": "ipython"}


def require(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise an ``ImportError`` that says which cxlib extra installs it.

    Args:
        module: the module to import, e.g. ``"imageio.v3"``.
        extra: the extra of cxlib that installs it, e.g. ``"train"``.
        purpose: what needs it, for the message.

    Returns:
        The module.

    Example:
        >>> from cxlib._optional import require
        >>> require("json", extra="train", purpose="reading JSON").dumps([1])
        '[1]'
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = module.split(".")[0]
        distribution = _DISTRIBUTIONS.get(package, package)
        raise ImportError(
            f"{purpose} needs {distribution}, which cxlib's {extra!r} extra installs: "
            f'pip install "cxlib[{extra}] @ {REPOSITORY}" (or pip install {distribution})'
        ) from error
