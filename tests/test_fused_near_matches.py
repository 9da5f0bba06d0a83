"""The fused kernels where generated points match target points: exact copies, repeated targets,
near-duplicates. Training drives x towards y, so this is where the loss is used; it is also where
Eq. 2 divides by a row minimum close to 0 (den = min_k d_ik + eps, down to eps = 1e-5) and
amplifies any rounding that differs between the forward and the backward.

Run under Triton's interpreter on the CPU (on a GPU with CXLIB_TEST_DEVICE=cuda), against the
float64 NumPy reference (values) and the float64 full path (gradients). The full and blocked
paths in float32 are held to the same tolerances on the same cases.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import torch

import cxlib
import numpy_reference as ref
import cxlib.contextual.fused as fused
from cxlib.contextual.fused import fused_available

DEVICE = os.environ.get("CXLIB_TEST_DEVICE", "cpu")

# The sizes of the measurement: not multiples of the 64x64 tiles, nor of 32 channels.
CHANNELS, NUM_X, NUM_Y, BAND_WIDTH = 16, 37, 45, 0.5
MATCHED_ROWS = torch.arange(0, NUM_X, 3)  # 13 of the 37 generated points match a target
REPEATS = 15  # in "repeated", targets 30..44 are copies of targets 0..14
KINDS = ("exact", "repeated", "near1e-4", "near1e-6")


def _features(kind: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample (1, C, Nx, 1) and (1, C, N, 1): random points, a third of the generated ones
    set onto (or next to) target points."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(1, CHANNELS, NUM_Y, 1, generator=g)
    x = torch.randn(1, CHANNELS, NUM_X, 1, generator=g)
    targets = (MATCHED_ROWS * 7 + 2) % NUM_Y  # distinct targets
    if kind == "exact":
        x[..., MATCHED_ROWS, :] = y[..., targets, :]
    elif kind == "repeated":
        y[..., NUM_Y - REPEATS:, :] = y[..., :REPEATS, :]
        # each matched point equals a target that appears twice (the two are tied in Eq. 2)
        x[..., MATCHED_ROWS, :] = y[..., torch.arange(len(MATCHED_ROWS)), :]
    else:
        noise = float(kind.removeprefix("near"))
        x[..., MATCHED_ROWS, :] = (y[..., targets, :]
                                   + noise * torch.randn(1, CHANNELS, len(MATCHED_ROWS), 1, generator=g))
    return x, y


def _pair(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Two samples of the kind (the kernels index the batch)."""
    (x0, y0), (x1, y1) = _features(kind, 0), _features(kind, 1)
    return torch.cat([x0, x1]), torch.cat([y0, y1])


def _tied_targets_summed(grad_y: torch.Tensor) -> torch.Tensor:
    """grad_y with each pair of identical targets (repeated) summed: when x_i's nearest target
    appears twice, the row minimum's gradient may go to either copy (both are the minimum, and
    float32 and float64 break the tie differently); their sum is the same either way."""
    grad_y = grad_y.clone()
    grad_y[..., :REPEATS, :] += grad_y[..., NUM_Y - REPEATS:, :]
    return grad_y[..., :NUM_Y - REPEATS, :]


def _use_backward(monkeypatch, backward: str) -> None:
    """Make implementation="fused" run the fused kernels with this backward (the public API
    always takes the default, "two-kernels")."""
    monkeypatch.setattr(fused, "fused_similarity",
                        functools.partial(fused.fused_similarity, backward=backward))


def _value_and_gradients(x, y, distance, implementation, dtype):
    x = x.to(device=DEVICE, dtype=dtype).clone().requires_grad_()
    y = y.to(device=DEVICE, dtype=dtype).clone().requires_grad_()
    score = cxlib.contextual_similarity(x, y, band_width=BAND_WIDTH, distance=distance,
                                        implementation=implementation)
    upstream = torch.tensor([1.0, -0.5], device=DEVICE, dtype=dtype)  # uneven, per sample
    grad_x, grad_y = torch.autograd.grad(score, (x, y), upstream)
    return score.detach(), grad_x, grad_y


@pytest.mark.parametrize("distance", ["cosine", "l2"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("implementation", [
    pytest.param("fused", marks=pytest.mark.skipif(not fused_available(DEVICE), reason="Triton unavailable")),
    pytest.param("fused:one-pass", marks=pytest.mark.skipif(not fused_available(DEVICE), reason="Triton unavailable")),
    "full", "blocked"])
def test_near_matches_values_and_gradients(implementation, kind, distance, monkeypatch):
    if implementation == "fused:one-pass":
        _use_backward(monkeypatch, "one-pass")
        implementation = "fused"
    x, y = _pair(kind)
    score, grad_x, grad_y = _value_and_gradients(x, y, distance, implementation, torch.float32)
    want = ref.contextual_similarity(x.double().numpy(), y.double().numpy(), BAND_WIDTH, 1e-5, distance)
    assert score.dtype == torch.float32
    np.testing.assert_allclose(score.cpu().double().numpy(), want, rtol=1e-6)

    _, want_x, want_y = _value_and_gradients(x, y, distance, "full", torch.float64)
    if kind == "repeated":
        grad_y, want_y = _tied_targets_summed(grad_y), _tied_targets_summed(want_y)
    for name, got, expected in (("x", grad_x, want_x), ("y", grad_y, want_y)):
        scale = expected.abs().max().item()
        assert scale > 0  # the cases keep unmatched points, whose gradients are not 0
        error = (got.double() - expected).abs().max().item() / scale
        # float32 paths are within ~1e-6 of float64 here; 1e-5 of the largest entry allows for
        # other rounding (other BLAS, a GPU) and still catches any mismatch between the passes
        assert error < 1e-5, f"grad {name}: error {error:.2e} of the largest entry {scale:.2e}"


@pytest.mark.skipif(not fused_available(DEVICE), reason="Triton unavailable")
@pytest.mark.parametrize("backward", fused.FUSED_BACKWARDS)
@pytest.mark.parametrize("wanted", ["x", "y"])
def test_one_gradient_alone_near_matches(wanted, backward, monkeypatch):
    """Only x's gradient (a fixed target, as in training) or only y's: the backward then runs
    its kernels differently (without x's, only the first channel block of _grad_x, for the row
    sums the row minimum's gradient needs; one-pass: _grad_rows without or with y's products).
    80 channels: two channel blocks of 64 (five of 16 in _grad_rows_xy)."""
    _use_backward(monkeypatch, backward)
    g = torch.Generator().manual_seed(5)
    y = torch.randn(1, 80, 6, 5, generator=g)
    x = torch.randn(1, 80, 5, 5, generator=g)
    x[..., 0, :] = y[..., 1, :]
    x[..., 2, :] = y[..., 3, :] + 1e-4 * torch.randn(1, 80, 5, generator=g)
    leaf = (x if wanted == "x" else y).to(DEVICE).clone().requires_grad_()
    other = (y if wanted == "x" else x).to(DEVICE)
    pair = (leaf, other) if wanted == "x" else (other, leaf)
    (got,) = torch.autograd.grad(
        cxlib.contextual_loss(*pair, distance="l2", band_width=BAND_WIDTH, implementation="fused"), leaf)
    leaf64 = leaf.detach().cpu().double().requires_grad_()
    pair64 = (leaf64, other.cpu().double()) if wanted == "x" else (other.cpu().double(), leaf64)
    (want,) = torch.autograd.grad(
        cxlib.contextual_loss(*pair64, distance="l2", band_width=BAND_WIDTH, implementation="full"), leaf64)
    error = (got.cpu().double() - want).abs().max().item() / want.abs().max().item()
    assert error < 1e-5, f"grad {wanted}: error {error:.2e} of the largest entry"
