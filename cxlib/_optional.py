"""Optional dependencies: imported when first needed, with an error that names the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]


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
        raise ImportError(
            f"{purpose} needs {package}, which cxlib's {extra!r} extra installs: "
            f'pip install "cxlib[{extra}]" (or pip install {package})'
        ) from error
