"""CycleGAN: the one-backward update equals the authors' two-optimiser update, the networks are the
ones described (receptive field, value range), the history pool, and exact resumption."""

from __future__ import annotations

import copy

import pytest
import torch

from cxlib.training import (
    CycleGAN,
    CycleGANObjective,
    ImagePool,
    PatchDiscriminator,
    ResnetGenerator,
    StackedImages,
    StepBatches,
    train,
)


def small_model(pool_size: int = 50) -> CycleGAN:
    torch.manual_seed(0)
    return CycleGAN(generator_width=4, blocks=1, discriminator_width=4, pool_size=pool_size)


def authors_step(model: CycleGAN, a: torch.Tensor, b: torch.Tensor, lr: float, betas) -> None:
    """The update as the authors' code makes it: the generators' step with the discriminators
    frozen, then the discriminators' step on the fakes made before it, each with its own Adam.
    Written out here from the networks, without CycleGAN.forward or CycleGANObjective."""
    generators = [*model.g_ab.parameters(), *model.g_ba.parameters()]
    discriminators = [*model.d_a.parameters(), *model.d_b.parameters()]
    opt_g = torch.optim.Adam(generators, lr=lr, betas=betas)
    opt_d = torch.optim.Adam(discriminators, lr=lr, betas=betas)

    fake_b, fake_a = model.g_ab(a), model.g_ba(b)
    for p in discriminators:
        p.requires_grad_(False)
    loss_g = ((model.d_b(fake_b) - 1) ** 2).mean() + ((model.d_a(fake_a) - 1) ** 2).mean()
    loss_g = loss_g + 10 * ((model.g_ba(fake_b) - a).abs().mean() + (model.g_ab(fake_a) - b).abs().mean())
    loss_g = loss_g + 5 * ((model.g_ba(a) - a).abs().mean() + (model.g_ab(b) - b).abs().mean())
    opt_g.zero_grad()
    loss_g.backward()
    opt_g.step()
    for p in discriminators:
        p.requires_grad_(True)
    # The pool is not full: it returns the fakes as they are.
    loss_d = 0.5 * (((model.d_b(b) - 1) ** 2).mean() + (model.d_b(fake_b.detach()) ** 2).mean()) \
        + 0.5 * (((model.d_a(a) - 1) ** 2).mean() + (model.d_a(fake_a.detach()) ** 2).mean())
    opt_d.zero_grad()
    loss_d.backward()
    opt_d.step()


def test_one_backward_update_equals_the_authors_two_optimiser_update(tmp_path):
    a = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    b = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    model = small_model()
    reference = copy.deepcopy(model)
    betas = (0.5, 0.999)
    train(model, CycleGANObjective(), lambda s: {"source": a, "target": b}, steps=1,
          run_dir=tmp_path, lr=2e-4, betas=betas, progress=False, device="cpu")
    authors_step(reference, a, b, 2e-4, betas)
    for (name, got), want in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, msg=name)
    # The step moved every network (the comparison above is not between unchanged copies).
    before = small_model()
    for net in ("g_ab", "g_ba", "d_a", "d_b"):
        moved = max((p - q).abs().max().item() for p, q in
                    zip(getattr(model, net).parameters(), getattr(before, net).parameters()))
        assert moved > 1e-5, net


def test_generator_terms_reach_only_the_generators_and_discriminator_terms_only_the_discriminators():
    model = small_model()
    a, b = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    out = model(a, b)
    generator_loss = out.fake_b_score.sum() + out.fake_a_score.sum()
    generator_loss.backward()
    assert all(p.grad is None for p in [*model.d_a.parameters(), *model.d_b.parameters()])
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.g_ab.parameters()
               if p.ndim > 1)
    model.zero_grad(set_to_none=True)
    out = model(a, b)
    (out.pooled_a_score.sum() + out.pooled_b_score.sum()).backward()
    assert all(p.grad is None for p in [*model.g_ab.parameters(), *model.g_ba.parameters()])


def test_least_squares_terms_equal_their_closed_form_for_constant_scores():
    """A discriminator whose last convolution outputs a constant c: D loss = (c - 1)^2 + c^2
    (half of each for the two domains, summed), G adversarial = 2 (c - 1)^2."""
    model = small_model()
    c = 0.3
    for d in (model.d_a, model.d_b):
        last = d.net[-1]
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.constant_(last.bias, c)
    _, logs = CycleGANObjective(identity_weight=0.0)(model, {"source": torch.rand(2, 3, 32, 32),
                                                            "target": torch.rand(2, 3, 32, 32)})
    assert logs["D"] == pytest.approx((c - 1) ** 2 + c**2, rel=1e-6)
    assert logs["G/adversarial"] == pytest.approx(2 * (c - 1) ** 2, rel=1e-6)
    assert logs["G/identity"] == 0.0


def test_patch_discriminator_sees_70_by_70_patches():
    torch.manual_seed(0)
    d = PatchDiscriminator(width=4, layers=3).double()
    # Instance normalisation mixes in statistics of the whole image: the convolutions alone
    # make the receptive field.
    for k, layer in enumerate(d.net):
        if isinstance(layer, torch.nn.InstanceNorm2d):
            d.net[k] = torch.nn.Identity()
    images = torch.rand(1, 3, 160, 160, dtype=torch.float64, requires_grad=True)
    scores = d(images)
    scores[0, 0, scores.shape[2] // 2, scores.shape[3] // 2].backward()
    seen = images.grad.abs().sum((0, 1)) > 0
    rows = seen.any(1).nonzero().flatten()
    cols = seen.any(0).nonzero().flatten()
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (70, 70)


def test_generator_maps_images_in_0_1_to_0_1_and_checks_its_input():
    g = ResnetGenerator(width=4, blocks=1)
    out = g(torch.rand(2, 3, 16, 16) * 10 - 5)
    assert out.min() >= 0 and out.max() <= 1 and out.shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"divisible by 4 and at least 8, got shape \(1, 3, 18, 16\)"):
        g(torch.rand(1, 3, 18, 16))
    with pytest.raises(ValueError, match="width"):
        ResnetGenerator(width=0)


def test_image_pool_returns_new_or_stored_images_and_keeps_the_rest():
    torch.manual_seed(3)
    pool = ImagePool(4)
    first = torch.arange(4.0).view(4, 1, 1, 1)
    assert torch.equal(pool(first), first)
    swapped = 0
    for step in range(20):
        new = torch.full((2, 1, 1, 1), 100.0 + 2 * step) + torch.tensor([0.0, 1.0]).view(2, 1, 1, 1)
        before = sorted(pool.images.flatten().tolist())
        out = pool(new)
        after = sorted(pool.images.flatten().tolist())
        # Nothing is lost or duplicated: stored + new = stored' + returned.
        assert sorted(before + new.flatten().tolist()) == sorted(after + out.flatten().tolist())
        swapped += int((out != new).sum())
    assert 5 < swapped < 35  # about half of the 40 images were swapped
    assert torch.equal(ImagePool(0)(first), first)


def test_cyclegan_resumes_exactly_pool_included(tmp_path):
    data_a = StepBatches(StackedImages(torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(4))), 2, seed=0)
    data_b = StepBatches(StackedImages(torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(5))), 2, seed=1)

    def batches(step):
        return {"source": data_a(step), "target": data_b(step)}

    straight = train(small_model(pool_size=3), CycleGANObjective(), batches, steps=4,
                     run_dir=tmp_path / "straight", lr=2e-4, betas=(0.5, 0.999), progress=False,
                     device="cpu")
    train(small_model(pool_size=3), CycleGANObjective(), batches, steps=2, run_dir=tmp_path / "split",
          lr=2e-4, betas=(0.5, 0.999), progress=False, device="cpu")
    resumed = train(small_model(pool_size=3), CycleGANObjective(), batches, steps=4,
                    run_dir=tmp_path / "split", lr=2e-4, betas=(0.5, 0.999), progress=False,
                    device="cpu")
    assert resumed.resumed_from == 2
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    for p, q in zip(resumed.model.state_dict().values(), straight.model.state_dict().values()):
        assert torch.equal(p, q)


def test_train_checks_betas(tmp_path):
    with pytest.raises(ValueError, match=r"betas must be in \[0, 1\), got \(0.5, 1.0\)"):
        train(small_model(), CycleGANObjective(), lambda s: {}, steps=1, run_dir=tmp_path,
              betas=(0.5, 1.0), progress=False, device="cpu")


def test_a_run_trained_with_amp_resumes_without_it(tmp_path):
    """The history pool keeps float32 images: before, a pool filled under autocast handed
    bfloat16/float16 images to float32 discriminators after a resume without AMP."""
    data_a = StepBatches(StackedImages(torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(4))), 2, seed=0)
    data_b = StepBatches(StackedImages(torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(5))), 2, seed=1)

    def batches(step):
        return {"source": data_a(step), "target": data_b(step)}

    for steps, amp in ((3, True), (12, False)):
        result = train(small_model(pool_size=1), CycleGANObjective(), batches, steps=steps,
                       run_dir=tmp_path, lr=2e-4, betas=(0.5, 0.999), amp=amp, progress=False,
                       device="cpu")
    assert result.step == 12 and result.model.pool_a.images.dtype == torch.float32


def test_a_resumed_run_takes_the_learning_rate_it_is_given(tmp_path):
    """Before, the optimiser's saved learning rate (and betas) silently won over the call's."""
    data = StepBatches(StackedImages(torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(6))), 2, seed=0)

    def batches(step):
        return {"source": data(step), "target": data(step + 1)}

    first = train(small_model(), CycleGANObjective(), batches, steps=2, run_dir=tmp_path, lr=1e-2,
                  progress=False, device="cpu")
    before = [p.detach().clone() for p in first.model.parameters()]
    resumed = train(small_model(), CycleGANObjective(), batches, steps=3, run_dir=tmp_path,
                    lr=1e-12, progress=False, device="cpu")
    moved = max((p - q).abs().max().item() for p, q in zip(resumed.model.parameters(), before))
    assert moved < 1e-9  # an Adam step moves each parameter by about lr


def test_pool_and_networks_refuse_what_they_cannot_take():
    pool = ImagePool(3)
    pool(torch.rand(2, 3, 4, 4))
    with pytest.raises(ValueError, match="holds 3 images, this one 5: resume with pool_size=3"):
        ImagePool(5).load_state_dict(pool.state_dict())
    with pytest.raises(ValueError, match=r"H, W >= 24, got shape \(1, 3, 20, 32\)"):
        PatchDiscriminator(width=4)(torch.rand(1, 3, 20, 32))
    with pytest.raises(ValueError, match=r"at least 8, got shape \(1, 3, 4, 4\)"):
        ResnetGenerator(width=4, blocks=1)(torch.rand(1, 3, 4, 4))
