"""implementation="auto" checks the fused kernels on the device before using them and falls back to
the blocked path, with one warning, when they fail or disagree; an explicit "fused" keeps raising,
and says what it needs on a machine where it cannot run.

The fused kernels run here under Triton's interpreter on the CPU; "auto" is made to consider them
by patching the device rule (on a real machine it considers CUDA devices only).
"""

from __future__ import annotations

import warnings

import pytest
import torch

import cxlib
import cxlib.contextual.paths as paths
import cxlib.contextual.fused
import cxlib.contextual.fused_check as fused_check
from autograd_graph import node_names
from cxlib.contextual.fused_check import FusedFallbackWarning

REAL_DEVICE_RULE = paths._auto_fused_device
pytestmark = pytest.mark.skipif(not cxlib.contextual.fused.fused_available("cpu"), reason="Triton unavailable")


@pytest.fixture(autouse=True)
def _auto_may_use_fused(monkeypatch):
    fused_check.reset_fused_verdicts()
    monkeypatch.setattr(paths, "AUTO_USES_FUSED", True)
    monkeypatch.setattr(paths, "_auto_fused_device", lambda device: True)
    yield
    fused_check.reset_fused_verdicts()


def _features(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 6, 5, 5, generator=g, requires_grad=True), torch.randn(1, 6, 4, 4, generator=g)


def _path_of(loss):
    return "fused" if "_FusedSimilarityBackward" in node_names(loss) else "other"


def _count_checks(monkeypatch):
    calls = []
    real = fused_check._disagreement

    def counting(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(fused_check, "_disagreement", counting)
    return calls


def test_healthy_kernels_pass_their_check_once_and_are_used(monkeypatch):
    calls = _count_checks(monkeypatch)
    x, y = _features()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FusedFallbackWarning)
        with torch.inference_mode():  # the check itself needs gradients, and gets them
            cxlib.contextual_loss(x, y)
        first = cxlib.contextual_loss(x, y)
        second = cxlib.contextual_loss(x, y)
    assert _path_of(first) == _path_of(second) == "fused"
    assert len(calls) == 1  # per process, device, distance and dtype
    cxlib.contextual_loss(x, y, distance="l2")
    assert len(calls) == 2
    assert fused_check.fused_verdict("cpu", "cosine", torch.float32) is None


def test_kernels_that_fail_give_one_warning_and_the_blocked_path_from_then_on(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("PTX assembly aborted")

    monkeypatch.setattr(cxlib.contextual.fused, "fused_similarity", broken)
    x, y = _features()
    want = cxlib.contextual_loss(x, y, implementation="full")
    with pytest.warns(FusedFallbackWarning, match=r"failed to compile or run \(RuntimeError: PTX assembly aborted\)"):
        got = cxlib.contextual_loss(x, y)
    assert _path_of(got) == "other"
    torch.testing.assert_close(got, want)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FusedFallbackWarning)  # once only
        again = cxlib.contextual_loss(x, y)
    torch.testing.assert_close(again, want)
    with pytest.raises(RuntimeError, match="PTX assembly aborted"):  # explicit: no fallback
        cxlib.contextual_loss(x, y, implementation="fused")


def test_kernels_that_disagree_are_not_used(monkeypatch):
    real = cxlib.contextual.fused.fused_similarity
    monkeypatch.setattr(cxlib.contextual.fused, "fused_similarity", lambda *a, **k: real(*a, **k) * 1.001)
    x, y = _features(1)
    with pytest.warns(FusedFallbackWarning, match=r"disagree with the blocked path .* value 1\.0\de-03"):
        got = cxlib.contextual_loss(x, y)
    torch.testing.assert_close(got, cxlib.contextual_loss(x, y, implementation="blocked"))
    assert "disagree" in fused_check.fused_verdict("cpu", "cosine", torch.float32)


def test_wrong_gradients_alone_are_caught(monkeypatch):
    class WrongGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, score):
            return score.clone()

        @staticmethod
        def backward(ctx, grad):
            return 1.01 * grad

    real = cxlib.contextual.fused.fused_similarity
    monkeypatch.setattr(cxlib.contextual.fused, "fused_similarity", lambda *a, **k: WrongGradient.apply(real(*a, **k)))
    x, y = _features(2)
    with pytest.warns(FusedFallbackWarning, match="gradients"):
        cxlib.contextual_loss(x, y)


def test_auto_stays_off_the_fused_path_unless_allowed(monkeypatch):
    monkeypatch.setattr(paths, "AUTO_USES_FUSED", False)
    calls = _count_checks(monkeypatch)
    x, y = _features()
    assert _path_of(cxlib.contextual_loss(x, y)) == "other"
    assert calls == []


def test_explicit_fused_where_it_cannot_run_says_what_it_needs(monkeypatch):
    """Before: a Triton driver error from deep inside the launch."""
    monkeypatch.setattr(cxlib.contextual.fused, "_interpreting", lambda: False)  # a plain CPU machine
    x, y = _features()
    with pytest.raises(ValueError, match=r"implementation='fused' runs Triton kernels on a CUDA device.*got tensors on cpu.*'auto'.*'blocked'.*'full'"):
        cxlib.contextual_loss(x, y, implementation="fused")
    # "auto" on such a machine never tries the kernels: the real rule wants a CUDA device
    monkeypatch.setattr(paths, "_auto_fused_device", REAL_DEVICE_RULE)
    calls = _count_checks(monkeypatch)
    assert _path_of(cxlib.contextual_loss(x, y)) == "other" and calls == []


def test_the_kernels_launch_on_the_tensors_device(monkeypatch):
    """Triton launches on the current CUDA device: before the fix, features on cuda:1 were read
    as if on cuda:0. Every launch now runs under the tensors' device (recorded here on the CPU,
    where the guard is a no-op), and the guard for a CUDA tensor selects its device."""
    entered = []
    real = cxlib.contextual.fused._on_device_of

    def recording(tensor):
        entered.append(tensor.device)
        return real(tensor)

    monkeypatch.setattr(cxlib.contextual.fused, "_on_device_of", recording)
    x = torch.randn(1, 5, 20, requires_grad=True)
    y = torch.randn(1, 7, 20, requires_grad=True)
    cxlib.contextual.fused.fused_similarity(x, y, distance="cosine", band_width=0.5, eps=1e-5).sum().backward()
    assert entered == [torch.device("cpu")] * 3  # forward (both kernels), grad_x, grad_y

    class FakeCudaTensor:
        device = torch.device("cuda", 1)

    guard = real(FakeCudaTensor())
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
