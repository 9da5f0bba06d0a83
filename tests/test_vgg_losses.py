"""VGGContextualLoss, PerceptualLoss and GramLoss against their terms computed one by one."""

from __future__ import annotations

import numpy_reference as ref
import pytest
import torch

import cxlib


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(7)
    return [torch.rand(2, 3, 24, 24, generator=generator) for _ in range(3)]


def test_vgg_contextual_loss_equals_the_sum_of_its_terms(images):
    generated, target, source = images
    loss_fn = cxlib.VGGContextualLoss(
        {"conv3_2": 1.0, "relu2_1": 0.5}, {"conv4_2": 2.0}, band_width=0.3, weights=None
    )
    assert not loss_fn.pretrained
    vgg = cxlib.VGG19Features(["conv3_2", "relu2_1", "conv4_2"], weights=None)
    g, t, s = vgg(generated), vgg(target), vgg(source)
    # Each term from the float64 NumPy reference on the same features.
    want = {"target/conv3_2": ref.contextual_loss(g["conv3_2"], t["conv3_2"], 0.3),
            "target/relu2_1": ref.contextual_loss(g["relu2_1"], t["relu2_1"], 0.3),
            "source/conv4_2": ref.contextual_loss(g["conv4_2"], s["conv4_2"], 0.3)}
    got = loss_fn(generated, target, source)
    by_hand = 1.0 * want["target/conv3_2"] + 0.5 * want["target/relu2_1"] + 2.0 * want["source/conv4_2"]
    assert got.item() == pytest.approx(by_hand, rel=1e-5, abs=1e-6)
    terms = loss_fn.terms(generated, target, source)
    assert list(terms) == ["target/conv3_2", "target/relu2_1", "source/conv4_2"]
    assert {k: v.item() for k, v in terms.items()} == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_fixed_target_features_are_reused(images):
    generated, target, source = images
    loss_fn = cxlib.VGGContextualLoss(weights=None)
    each_time = loss_fn(generated, target, source)
    loss_fn.fix_target(target)
    calls = []
    hook = loss_fn.vgg.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    fixed = loss_fn(generated, source=source)
    hook.remove()
    assert each_time.item() == pytest.approx(fixed.item(), rel=1e-6)
    assert len(calls) == 2  # the generated image and the source; the target's features were kept
    loss_fn.fix_target(None)
    with pytest.raises(ValueError, match=r"no target given: pass target=<images \(B, 3, H, W\)> or call fix_target\(images\) first"):
        loss_fn(generated, source=source)


def test_identical_images_give_zero_and_gradients_reach_the_generated_image(images):
    generated, target, _ = images
    loss_fn = cxlib.VGGContextualLoss(weights=None)
    assert loss_fn(target, target, target).item() == pytest.approx(0.0, abs=1e-4)
    generated = generated.clone().requires_grad_()
    loss_fn(generated, target, target).backward()
    assert generated.grad.abs().sum() > 0


def test_gradcheck_float64():
    # conv1_1 is the only read-out with no ReLU or max-pool before it: deeper layers have kinks
    # that a finite-difference step of 1e-6 can cross (seen with conv1_2, at 1e-6 from a kink).
    loss_fn = cxlib.VGGContextualLoss({"conv1_1": 1.0}, {"conv1_1": 0.5}, weights=None).double()
    generated = torch.rand(1, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    target, source = torch.rand(1, 3, 6, 6, dtype=torch.float64), torch.rand(1, 3, 6, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda g: loss_fn(g, target, source), (generated,))
    perceptual = cxlib.PerceptualLoss({"conv1_2": 1.0}, weights=None).double()
    gram = cxlib.GramLoss({"relu1_1": 1.0, "conv2_1": 0.5}, weights=None).double()
    assert torch.autograd.gradcheck(lambda g: perceptual(g, target) + gram(g, source), (generated,))


def test_perceptual_and_gram_modules_equal_their_functions(images):
    generated, target, _ = images
    vgg = cxlib.VGG19Features(["relu1_1", "relu2_1", "conv4_2"], weights=None)
    g, t = vgg(generated), vgg(target)
    perceptual = cxlib.PerceptualLoss(weights=None)
    torch.testing.assert_close(perceptual(generated, target), cxlib.perceptual_loss(g["conv4_2"], t["conv4_2"]))
    gram = cxlib.GramLoss({"relu1_1": 1.0, "relu2_1": 3.0}, vgg=vgg)
    assert gram.vgg is vgg
    want = cxlib.gram_loss(g["relu1_1"], t["relu1_1"]) + 3.0 * cxlib.gram_loss(g["relu2_1"], t["relu2_1"])
    torch.testing.assert_close(gram(generated, target), want)
    gram.fix_reference(target)
    torch.testing.assert_close(gram(generated), want)


def test_bad_arguments():
    with pytest.raises(ValueError, match="target_layers: unknown VGG19 layer 'conv6_1'"):
        cxlib.VGGContextualLoss({"conv6_1": 1.0}, weights=None)
    with pytest.raises(TypeError, match="must be a mapping of VGG19 layer names to weights"):
        cxlib.VGGContextualLoss(["conv4_2"], weights=None)
    with pytest.raises(ValueError, match="both empty"):
        cxlib.VGGContextualLoss({}, {}, weights=None)
    with pytest.raises(ValueError, match="band_width must be > 0"):
        cxlib.VGGContextualLoss(band_width=0.0, weights=None)
    with pytest.raises(TypeError):
        cxlib.VGGContextualLoss({"conv4_2": 1.0}, {}, 0.5)  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"vgg does not compute the layers \['conv4_2'\]"):
        cxlib.PerceptualLoss(vgg=cxlib.VGG19Features(["conv1_1"], weights=None))
    loss_fn = cxlib.VGGContextualLoss(weights=None)
    with pytest.raises(ValueError, match=r"generated must be RGB images \(B, 3, H, W\)"):
        loss_fn(torch.rand(1, 1, 16, 16), torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))


def test_one_reference_image_serves_the_whole_batch(images):
    generated, target, _ = images  # batches of 2
    loss_fn = cxlib.VGGContextualLoss({"conv3_2": 1.0}, {}, weights=None, reduction="none")
    single = loss_fn(generated, target[:1])
    repeated = loss_fn(generated, target[:1].expand(2, -1, -1, -1))
    torch.testing.assert_close(single, repeated)
    with pytest.raises(ValueError, match="same batch size"):
        loss_fn(torch.cat([generated, generated[:1]]), target)


def _count_isfinite(monkeypatch):
    calls = []
    real = torch.isfinite

    def counting(t):
        calls.append(tuple(t.shape))
        return real(t)

    monkeypatch.setattr(torch, "isfinite", counting)
    return calls


def test_vgg_contextual_loss_checks_the_images_once_per_step_not_each_layer(monkeypatch):
    loss_fn = cxlib.VGGContextualLoss(weights=None)  # 2 target layers + 1 source layer
    loss_fn.fix_target(torch.rand(1, 3, 32, 32))
    loss_fn.fix_source(torch.rand(1, 3, 32, 32))
    generated = torch.rand(2, 3, 32, 32, requires_grad=True)
    calls = _count_isfinite(monkeypatch)
    loss_fn(generated).backward()
    assert calls == [(2, 3, 32, 32)]  # the generated images, once (was: x and y of each layer)
    calls.clear()
    cxlib.VGGContextualLoss(weights=None, check_finite=False, vgg=loss_fn.vgg)(
        generated, torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    assert calls == []


def test_non_finite_images_are_refused_or_propagate_when_unchecked():
    loss_fn = cxlib.VGGContextualLoss(weights=None)
    bad = torch.rand(1, 3, 32, 32)
    bad[0, 1, 3, 4] = float("nan")
    with pytest.raises(ValueError, match=r"generated must be finite, got 1 NaN or inf value\(s\)"):
        loss_fn(bad, torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"target must be finite"):
        loss_fn(torch.rand(1, 3, 32, 32), bad, torch.rand(1, 3, 32, 32))
    features = loss_fn.vgg(torch.rand(1, 3, 32, 32))
    features["conv4_2"] = features["conv4_2"].clone().fill_(float("inf"))
    with pytest.raises(ValueError, match=r"features\['conv4_2'\] must be finite"):
        loss_fn.terms_from_features(features, torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    unchecked = cxlib.VGGContextualLoss(weights=None, check_finite=False, vgg=loss_fn.vgg)
    assert torch.isnan(unchecked(bad, torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)))
    with pytest.raises(TypeError, match="check_finite must be True or False, got int 1"):
        cxlib.VGGContextualLoss(weights=None, check_finite=1)
