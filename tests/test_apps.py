"""The applications' objectives equal their losses written out, and the command line trains and
resumes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import numpy_reference as ref
import pytest
import torch

import cxlib

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    return cxlib.CRN(cxlib.crn_config(16, wide=6, narrow=4, narrow_from=16))


def test_animation_objective_is_the_table_1_loss(tiny_net):
    target = torch.rand(1, 3, 16, 16)
    frames = torch.rand(2, 3, 16, 16)
    objective = cxlib.training.AnimationObjective(target, weights=None)
    loss, logs = objective(tiny_net, {"source": frames})
    vgg = cxlib.VGG19Features(["conv3_2", "conv4_2"], weights=None)
    out, ft, fs = vgg(tiny_net(frames)), vgg(target), vgg(frames)
    want = {"target/conv3_2": ref.contextual_loss(out["conv3_2"], ft["conv3_2"]),
            "target/conv4_2": ref.contextual_loss(out["conv4_2"], ft["conv4_2"]),
            "source/conv4_2": ref.contextual_loss(out["conv4_2"], fs["conv4_2"])}
    assert logs == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert loss.item() == pytest.approx(sum(want.values()), rel=1e-5, abs=1e-6)


def test_animation_baseline_is_normalised_gram_plus_perceptual(tiny_net):
    target, frames = torch.rand(1, 3, 16, 16), torch.rand(2, 3, 16, 16)
    objective = cxlib.training.AnimationObjective(target, kind="gram", weights=None, scales=(2.0, 4.0))
    loss, logs = objective(tiny_net, {"source": frames})
    vgg = cxlib.VGG19Features(["relu1_1", "relu2_1", "relu3_1", "relu4_1", "conv4_2"], weights=None)
    out, ft, fs = vgg(tiny_net(frames)), vgg(target), vgg(frames)
    gram = sum(ref.gram_loss(out[l], ft[l]) for l in ("relu1_1", "relu2_1", "relu3_1", "relu4_1"))
    want = gram / 2.0 + ref.mean_absolute_difference(out["conv4_2"], fs["conv4_2"]) / 4.0
    assert loss.item() == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert logs["gram^t"] == pytest.approx(gram / 2.0, rel=1e-5)


def test_puppet_objectives(tiny_net):
    drawings = torch.rand(2, 1, 16, 16)
    frames = torch.rand(2, 3, 16, 16)
    net = cxlib.CRN(cxlib.crn_config(16, wide=6, narrow=4, narrow_from=16), in_channels=1)
    l1 = cxlib.training.PuppetObjective(kind="l1", weights=None, scales=(0.5, 2.0), perceptual_weight=0.1)
    loss, logs = l1(net, {"source": drawings, "target": frames})
    vgg = cxlib.VGG19Features(["conv5_2"], weights=None)
    out = net(drawings)
    want = (ref.mean_absolute_difference(out, frames) / 0.5
            + 0.1 * ref.mean_absolute_difference(vgg(out)["conv5_2"], vgg(frames)["conv5_2"]) / 2.0)
    assert loss.item() == pytest.approx(want, rel=1e-5, abs=1e-6)
    cx = cxlib.training.PuppetObjective(weights=None, scales=(0.5, 2.0))
    passes = []
    hook = cx.vgg.register_forward_hook(lambda module, args, result: passes.append(1))
    loss_cx, logs_cx = cx(net, {"source": drawings, "target": frames})
    hook.remove()
    assert len(passes) == 2  # one VGG pass for the output, one for the target
    assert set(logs_cx) == {"target/conv3_2", "target/conv4_2", "perceptual^t"}
    assert loss_cx.item() == pytest.approx(sum(logs_cx.values()), rel=1e-5)
    vgg3 = cxlib.VGG19Features(["conv3_2", "conv4_2", "conv5_2"], weights=None)
    fo, ft = vgg3(out), vgg3(frames)
    want = (ref.contextual_loss(fo["conv3_2"], ft["conv3_2"]) + ref.contextual_loss(fo["conv4_2"], ft["conv4_2"])
            + 0.1 * ref.mean_absolute_difference(fo["conv5_2"], ft["conv5_2"]) / 2.0)
    assert loss_cx.item() == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_domain_transfer_objective_is_the_sum_of_its_terms_written_out(tiny_net):
    # L = L_CX(G(s), t) at conv3_2 and conv4_2 + L_CX(G(s), s) at conv4_2, each -log of the
    # float64 NumPy reference's CX on the VGG features, averaged over the batch.
    g = torch.Generator().manual_seed(3)
    sources, others = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    objective = cxlib.training.DomainTransferObjective(weights=None, band_width=0.3)
    loss, logs = objective(tiny_net, {"source": sources, "target": others})
    vgg = objective.loss.vgg
    with torch.no_grad():
        out, tgt, src = (vgg(images) for images in (tiny_net(sources), others, sources))

    def cx_term(a, b):
        return float(-np.log(ref.contextual_similarity(a.double().numpy(), b.double().numpy(),
                                                       0.3, 1e-5, "cosine")).mean())

    want = {"target/conv3_2": cx_term(out["conv3_2"], tgt["conv3_2"]),
            "target/conv4_2": cx_term(out["conv4_2"], tgt["conv4_2"]),
            "source/conv4_2": cx_term(out["conv4_2"], src["conv4_2"])}
    assert logs.keys() == want.keys()
    for key, value in want.items():
        assert logs[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert loss.item() == pytest.approx(sum(want.values()), rel=1e-5, abs=1e-6)
    assert loss.requires_grad


def test_command_line_trains_and_resumes(tmp_path):
    photo = cxlib.book.images.load_image("astronaut", 16)
    video = cxlib.training.write_video(cxlib.book.synthetic_video(photo, 4), tmp_path / "clip.gif")
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "look.png", (cxlib.book.images.load_image("chelsea", 16)[0].permute(1, 2, 0) * 255).byte().numpy())
    command = [sys.executable, "-m", "cxlib.training", "animation", "--video", str(video),
               "--target", str(tmp_path / "look.png"), "--size", "16", "--steps", "3",
               "--weights", "random", "--run-dir", str(tmp_path / "run"), "--sample-every", "2",
               "--checkpoint-every", "2"]
    first = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-2000:]
    state = cxlib.training.load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == 3
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == ["step_0000002.png", "step_0000003.png"]
    longer = command[:command.index("--steps") + 1] + ["5"] + command[command.index("--steps") + 2:]
    second = subprocess.run(longer, capture_output=True, text=True, check=False, cwd=ROOT)
    assert second.returncode == 0, second.stderr[-2000:]
    assert cxlib.training.load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 5


def _frames_batches(size=16, count=4):
    frames = torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(4))
    return frames, cxlib.training.StepBatches(cxlib.training.StackedImages(frames), 2, seed=0)


def test_baseline_scales_are_measured_once_before_training_and_kept_in_the_checkpoint(tmp_path, monkeypatch):
    """Before: measured lazily in the first forward (the puppet one on the untrained network's
    output), never checkpointed, so a resumed run optimised another objective."""
    target = torch.rand(1, 3, 16, 16)
    frames, batches = _frames_batches()
    objective = cxlib.training.AnimationObjective(target, kind="gram", weights=None)
    assert not objective.calibrated
    with pytest.raises(RuntimeError, match="not measured yet"):
        objective(torch.nn.Identity(), {"source": frames[:2]})
    # The Gram term (relu1_1 to relu4_1) between the first batch and the target, and the
    # perceptual one (conv4_2) between the batch and the target (the same 16 x 16 size here).
    vgg = cxlib.VGG19Features(["relu1_1", "relu2_1", "relu3_1", "relu4_1", "conv4_2"], weights=None)
    fs, ft = vgg(batches(0)), vgg(target)
    want = (sum(ref.gram_loss(fs[l], ft[l]) for l in ("relu1_1", "relu2_1", "relu3_1", "relu4_1")),
            ref.mean_absolute_difference(fs["conv4_2"], ft["conv4_2"]))

    def net():
        torch.manual_seed(0)
        return cxlib.CRN(cxlib.crn_config(16, wide=6, narrow=4, narrow_from=16))

    cxlib.training.train(net(), objective, lambda s: {"source": batches(s)}, steps=2, run_dir=tmp_path,
                progress=False, device="cpu")
    assert objective.scales == pytest.approx(want, rel=1e-5)
    saved = cxlib.training.load_checkpoint(tmp_path / "checkpoint.pt")["objective"]["scales"]
    assert saved.tolist() == pytest.approx(list(want), rel=1e-5)

    # A resumed run takes the checkpoint's scales and measures nothing.
    resumed = cxlib.training.AnimationObjective(target, kind="gram", weights=None)
    monkeypatch.setattr(resumed, "measure_scales", lambda *a: pytest.fail("measured again"))
    cxlib.training.train(net(), resumed, lambda s: {"source": batches(s)}, steps=3, run_dir=tmp_path,
                progress=False, device="cpu")
    assert resumed.scales == objective.scales


def test_puppet_scales_are_those_of_the_untrained_network_at_step_0(tmp_path):
    drawings = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    frames = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    pairs = cxlib.training.StepBatches(cxlib.training.StackedImages(torch.cat([drawings, frames], 1)), 2, seed=1)

    def batch(step):
        both = pairs(step)
        return {"source": both[:, :1], "target": both[:, 1:]}

    torch.manual_seed(0)
    net = cxlib.CRN(cxlib.crn_config(16, wide=6, narrow=4, narrow_from=16), in_channels=1)
    objective = cxlib.training.PuppetObjective(kind="l1", weights=None)
    with torch.no_grad():
        out = net(batch(0)["source"])
        vgg = cxlib.VGG19Features(["conv5_2"], weights=None)
        want = (ref.mean_absolute_difference(out, batch(0)["target"]),
                ref.mean_absolute_difference(vgg(out)["conv5_2"], vgg(batch(0)["target"])["conv5_2"]))
    cxlib.training.train(net, objective, batch, steps=2, run_dir=tmp_path, progress=False, device="cpu")
    assert objective.scales == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="positive and finite"):
        cxlib.training.PuppetObjective(weights=None, scales=(1.0, 0.0))
    with pytest.raises(TypeError, match="pair of positive numbers"):
        cxlib.training.PuppetObjective(weights=None, scales=3.0)


def test_command_line_puts_the_objective_where_the_model_trains(tmp_path, monkeypatch):
    """Before: the objective went to "cuda" (GPU 0 on every torchrun rank) while train() put the
    model on cuda:LOCAL_RANK. Now both come from training_device()."""
    import cxlib.training.cli as cli

    seen = {}

    def fake_train(model, objective, batch, **kwargs):
        seen["device"] = kwargs.get("device")
        seen["objective"] = {b.device for b in objective.buffers()}
        return cxlib.training.TrainResult(model=model)

    monkeypatch.setattr(cli, "train", fake_train)
    monkeypatch.setattr(cli, "training_device", lambda device=None: torch.device("meta"))
    photo = cxlib.book.images.load_image("astronaut", 16)
    video = cxlib.training.write_video(cxlib.book.synthetic_video(photo, 3), tmp_path / "clip.gif")
    assert cli.main(["puppet", "--video", str(video), "--size", "16", "--weights", "random",
                            "--run-dir", str(tmp_path / "run")]) == 0
    assert seen["device"] == torch.device("meta")
    assert seen["objective"] == {torch.device("meta")}


def test_contextual_objectives_train_under_amp_with_a_fixed_float32_target(tmp_path):
    """Under AMP the generated images' features are half precision while the animation's fixed
    target features are float32: the GPU check on an H200 found that this raised a dtype
    TypeError. The first logged loss equals the objective outside autocast, to the precision
    of bfloat16 convolutions."""
    torch.manual_seed(0)
    target = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    sources = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    objective = cxlib.training.AnimationObjective(target, weights=None)
    net = cxlib.CRN(cxlib.crn_config(32, wide=6, narrow=4, narrow_from=32))
    with torch.no_grad():
        want = float(objective(net, {"source": sources})[0])
    result = cxlib.training.train(net, objective, lambda s: {"source": sources}, steps=2,
                                  run_dir=tmp_path, lr=1e-3, amp=True, progress=False, device="cpu")
    assert result.step == 2
    assert abs(result.history[0]["loss"] - want) < 0.03 * want


def test_face_measures_on_closed_form_cases():
    from cxlib.book import attribute_transferred, head_centres, layout_kept

    images = torch.zeros(3, 3, 128, 128, dtype=torch.float16)
    images[0, :, 10:20, 30:50] = 1.0  # centre (14.5, 39.5)
    images[1, :, 100:110, 100:104] = 1.0  # centre (104.5, 101.5)
    centres = head_centres(images)  # float16 sums of indices would overflow
    assert centres[:2].tolist() == [[14.5, 39.5], [104.5, 101.5]]
    assert torch.isnan(centres[2]).all()  # nothing on the background: no centre
    own, other = layout_kept(images[:2].float(), images[:2].float())
    assert own == 0.0 and abs(other - float(np.hypot(90, 62))) < 1e-9
    source, truth = torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)
    truth[..., :4, :] = 1.0
    out = source.clone()
    out[..., :2, :] = 1.0  # half of the region moved all the way, half not at all
    assert attribute_transferred(out, source, truth).item() == 0.5
    assert torch.isnan(attribute_transferred(out, source, source)).all()
