"""What an autograd graph is made of: which path a loss was computed on."""

from __future__ import annotations

import torch


def node_names(tensor: torch.Tensor) -> set[str]:
    """The class names of every node of ``tensor``'s backward graph."""
    names, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None:
            names.add(type(node).__name__)
            stack.extend(n for n, _ in node.next_functions)
    return names
