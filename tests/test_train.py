"""The training loop: a run killed with SIGKILL resumes and ends exactly where an uninterrupted run
ends; checkpoints load with weights_only; DistributedDataParallel under torchrun averages the
gradients of its ranks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import cxlib

ROOT = Path(__file__).resolve().parent.parent

# A small training script shared by the tests: a tiny CRN fitted to random targets, with random
# numbers drawn inside the loss (so that restoring the generators' states matters).
SCRIPT = textwrap.dedent('''
    import os, sys, signal, torch, cxlib
    run_dir, steps = sys.argv[1], int(sys.argv[2])
    kill_at = int(sys.argv[3]) if len(sys.argv) > 3 else -1
    torch.manual_seed(0)
    model = cxlib.CRN(cxlib.crn_config(8, wide=6, narrow=4, narrow_from=8))
    data = cxlib.training.StackedImages(torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1)))
    batches = cxlib.training.StepBatches(data, 2, seed=3)

    def loss_fn(model, batch):
        noise = 0.05 * torch.randn(batch["x"].shape)  # uses the global generator
        return cxlib.l1_loss(model(batch["x"] + noise), batch["x"])

    def callback(step, values):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    result = cxlib.training.train(model, loss_fn, lambda s: {"x": batches(s)}, steps=steps, run_dir=run_dir,
                         lr=1e-2, checkpoint_every=3, sample_inputs=data.images[:2], sample_every=4,
                         progress=False, callback=callback, device="cpu")
    torch.save({"params": [p.detach() for p in model.parameters()], "resumed_from": result.resumed_from,
                "losses": [h["loss"] for h in result.history]}, os.path.join(run_dir, "final.pt"))
''')


def _run(tmp_path, run_dir, *args):
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(script), str(run_dir), *map(str, args)],
                          capture_output=True, text=True, env=env, check=False)


def test_a_killed_run_resumes_as_if_never_stopped(tmp_path):
    straight = _run(tmp_path, tmp_path / "straight", 10)
    assert straight.returncode == 0, straight.stderr
    killed = _run(tmp_path, tmp_path / "killed", 10, 8)
    assert killed.returncode == -9  # SIGKILL: no clean-up ran
    checkpoint = cxlib.training.load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    assert checkpoint["step"] == 6  # the last checkpoint before the kill, intact
    assert not (tmp_path / "killed" / "checkpoint.pt.tmp").exists()
    resumed = _run(tmp_path, tmp_path / "killed", 10)
    assert resumed.returncode == 0, resumed.stderr

    want = torch.load(tmp_path / "straight" / "final.pt", weights_only=True)
    got = torch.load(tmp_path / "killed" / "final.pt", weights_only=True)
    assert got["resumed_from"] == 6 and want["resumed_from"] == 0
    assert got["losses"] == want["losses"]  # the whole history, steps 1-10, identical
    for p, q in zip(got["params"], want["params"]):
        assert torch.equal(p, q)
    samples = sorted(p.name for p in (tmp_path / "killed" / "samples").iterdir())
    assert samples == ["step_0000004.png", "step_0000008.png", "step_0000010.png"]


def test_checkpoint_contents_and_a_finished_run_does_nothing(tmp_path):
    assert _run(tmp_path, tmp_path / "run", 4).returncode == 0
    state = cxlib.training.load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert set(state) == {"model", "optimizer", "scaler", "amp", "step", "history", "rng", "objective"}
    assert state["step"] == 4 and len(state["history"]) == 4 and state["amp"] is False
    assert state["objective"] == {}  # a plain function has nothing to calibrate
    again = _run(tmp_path, tmp_path / "run", 4)
    assert again.returncode == 0
    final = torch.load(tmp_path / "run" / "final.pt", weights_only=True)
    assert final["resumed_from"] == 4 and len(final["losses"]) == 4


def test_mixed_precision_on_the_cpu_trains(tmp_path):
    model = cxlib.CRN(cxlib.crn_config(8, wide=4, narrow=4))
    data = torch.rand(4, 3, 8, 8)
    result = cxlib.training.train(model, lambda m, b: cxlib.l1_loss(m(b["x"]).float(), b["x"]),
                         lambda s: {"x": data}, steps=20, run_dir=tmp_path, lr=1e-2, amp=True,
                         progress=False, device="cpu")
    losses = [h["loss"] for h in result.history]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_bad_arguments(tmp_path):
    model = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        cxlib.training.train(model, lambda m, b: m(b["x"]).sum(), lambda s: {}, steps=0, run_dir=tmp_path)
    with pytest.raises(ValueError, match="fewer than batch_size=5"):
        cxlib.training.StepBatches(cxlib.training.StackedImages(torch.rand(3, 3, 2, 2)), 5)


DDP_SCRIPT = textwrap.dedent('''
    import os, sys, torch, cxlib
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(4, 3, 1))
    data = cxlib.training.StackedImages(torch.rand(12, 3, 6, 6, generator=torch.Generator().manual_seed(1)))
    batches = cxlib.training.StepBatches(data, 2, seed=5)


    class Scaled:
        """A calibrated objective whose measurement differs per rank: train() must give every
        rank rank 0's value (1.0), or the ranks would optimise different objectives."""
        scale = None
        calibrated = property(lambda self: self.scale is not None)

        def calibrate(self, model, batch):
            self.scale = 1.0 + int(os.environ["RANK"])

        def calibration_state(self):
            return {"scale": torch.tensor([self.scale])}

        def load_calibration_state(self, state):
            self.scale = float(state["scale"])

        def __call__(self, m, b):
            return self.scale * cxlib.l2_loss(m(b["x"]), b["x"])

    objective = Scaled()
    result = cxlib.training.train(model, objective, lambda s: {"x": batches(s)}, steps=3, run_dir=sys.argv[1],
                         lr=0.05, progress=False, device="cpu")
    torch.save(objective.scale, os.path.join(sys.argv[1], f"scale{os.environ['RANK']}.pt"))
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save([p.detach() for p in model.parameters()], os.path.join(sys.argv[1], "params.pt"))
''')


def run_on_two_ranks(script_text: str, tmp_path) -> None:
    """Run a script under torchrun with two CPU processes (gloo); its run folder is tmp_path/ddp."""
    script = tmp_path / "ddp_script.py"
    script.write_text(script_text)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(script), str(tmp_path / "ddp")],
                          capture_output=True, text=True, env=env, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_distributed_data_parallel_averages_the_ranks_gradients(tmp_path):
    run_on_two_ranks(DDP_SCRIPT, tmp_path)
    got = torch.load(tmp_path / "ddp" / "params.pt", weights_only=True)
    assert (tmp_path / "ddp" / "checkpoint.pt").is_file()
    # Both ranks optimise rank 0's objective, and the checkpoint keeps it.
    assert [torch.load(tmp_path / "ddp" / f"scale{r}.pt") for r in (0, 1)] == [1.0, 1.0]
    assert cxlib.training.load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")["objective"]["scale"].item() == 1.0

    # The same three steps in one process: step s of rank r used batch 2s + r, and DDP averages
    # the two ranks' gradients, which is the gradient of the mean of the two batches' losses.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(4, 3, 1))
    data = cxlib.training.StackedImages(torch.rand(12, 3, 6, 6, generator=torch.Generator().manual_seed(1)))
    batches = cxlib.training.StepBatches(data, 2, seed=5)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for step in range(3):
        optimizer.zero_grad()
        loss = sum(cxlib.l2_loss(model(batches(2 * step + r)), batches(2 * step + r)) for r in (0, 1)) / 2
        loss.backward()
        optimizer.step()
    for p, q in zip(got, model.parameters()):
        torch.testing.assert_close(p, q.detach(), rtol=1e-5, atol=1e-6)


def _tiny_run(tmp_path, steps, **kwargs):
    torch.manual_seed(0)
    model = cxlib.CRN(cxlib.crn_config(8, wide=4, narrow=4))
    data = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    return cxlib.training.train(model, lambda m, b: cxlib.l1_loss(m(b["x"]).float(), b["x"]),
                       lambda s: {"x": data}, steps=steps, run_dir=tmp_path, lr=1e-2,
                       progress=False, **kwargs)


def test_resume_reads_the_checkpoint_on_the_cpu_whatever_the_device(tmp_path):
    """A run resumed on another device (a GPU) must read its checkpoint on the CPU: the random
    generators' states it holds must stay CPU tensors. Before the fix, train() loaded it with
    map_location=device and torch.set_rng_state raised. The 'meta' device stands in for a GPU:
    a finished run resumed there loads the checkpoint and restores every state."""
    _tiny_run(tmp_path, 3, device="cpu")
    saved = cxlib.training.load_checkpoint(tmp_path / "checkpoint.pt")
    torch.manual_seed(123)  # something else, which resuming must replace
    with warnings.catch_warnings():  # copying into meta parameters is a no-op, and says so
        warnings.simplefilter("ignore", UserWarning)
        result = _tiny_run(tmp_path, 3, device="meta")
    assert result.resumed_from == 3 and result.step == 3 and result.finished
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])
    assert all(p.device.type == "meta" for p in result.model.parameters())


def test_training_device_gives_every_rank_its_own_gpu(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert cxlib.training.training_device("cuda") == torch.device("cuda", 1)
    assert cxlib.training.training_device("cuda:0") == torch.device("cuda", 0)
    assert cxlib.training.training_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cxlib.training.training_device(None) == torch.device("cuda", 1)  # never a bare "cuda"
    monkeypatch.delenv("LOCAL_RANK")
    assert cxlib.training.training_device(None) == torch.device("cuda", 0)


def test_train_makes_the_training_gpu_the_current_device(monkeypatch, tmp_path):
    """NCCL, Triton and allocations without a device use the current CUDA device: train() must
    set it to the rank's GPU before anything else (here the call is recorded and the run stops
    when the model is moved, as there is no GPU)."""
    calls = []

    class Stop(Exception):
        pass

    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(device))

    def refuse_move(self, *args, **kwargs):
        raise Stop

    monkeypatch.setattr(torch.nn.Module, "to", refuse_move)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(Stop):
        cxlib.training.train(torch.nn.Linear(1, 1), lambda m, b: m(b["x"]).sum(), lambda s: {},
                    steps=1, run_dir=tmp_path, device="cuda")
    assert calls == [torch.device("cuda", 1)]


def test_resume_with_and_without_amp_whatever_the_run_started_with(tmp_path):
    """A GradScaler saved disabled has an empty state, which an enabled scaler refuses to load.
    Before the fix, resuming a run saved without AMP with --amp raised."""
    from cxlib.training.loop import _restore_scaler

    disabled = torch.amp.GradScaler("cpu", enabled=False)
    enabled = torch.amp.GradScaler("cpu", enabled=True, init_scale=8.0)
    with pytest.raises(RuntimeError, match="empty"):  # what the old code did
        torch.amp.GradScaler("cpu", enabled=True).load_state_dict(disabled.state_dict())
    fresh = torch.amp.GradScaler("cpu", enabled=True)
    _restore_scaler(fresh, disabled.state_dict())  # no AMP before, AMP now: starts afresh
    assert fresh.get_scale() == 65536.0
    _restore_scaler(fresh, enabled.state_dict())  # AMP before and now: its scale continues
    assert fresh.get_scale() == 8.0
    off = torch.amp.GradScaler("cpu", enabled=False)
    _restore_scaler(off, enabled.state_dict())  # AMP before, none now
    assert not off.is_enabled()
    # And through train(): a run without AMP resumed with it, and back.
    _tiny_run(tmp_path, 2, device="cpu")
    assert _tiny_run(tmp_path, 4, device="cpu", amp=True).step == 4
    assert cxlib.training.load_checkpoint(tmp_path / "checkpoint.pt")["amp"] is True
    assert _tiny_run(tmp_path, 5, device="cpu").step == 5


def test_time_limit_stops_with_a_checkpoint_and_the_next_call_continues(tmp_path):
    first = _tiny_run(tmp_path, 50, device="cpu", time_limit=1e-9, checkpoint_every=100)
    assert first.step == 1 and not first.finished  # stops after the first step
    assert cxlib.training.load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 1
    rest = _tiny_run(tmp_path, 5, device="cpu")
    assert rest.resumed_from == 1 and rest.step == 5 and rest.finished
    straight = _tiny_run(tmp_path / "straight", 5, device="cpu")
    assert [h["loss"] for h in rest.history] == [h["loss"] for h in straight.history]
    with pytest.raises(ValueError, match="time_limit must be > 0"):
        _tiny_run(tmp_path, 5, device="cpu", time_limit=0)


def test_measure_step_time_leaves_model_and_random_state_alone(tmp_path):
    torch.manual_seed(0)
    model = cxlib.CRN(cxlib.crn_config(8, wide=4, narrow=4))
    before = [p.detach().clone() for p in model.parameters()]
    data = torch.rand(2, 3, 8, 8)

    def loss_fn(m, b):
        return cxlib.l1_loss(m(b["x"] + 0.01 * torch.randn(b["x"].shape)), b["x"])

    state = torch.get_rng_state()
    seconds = cxlib.training.measure_step_time(model, loss_fn, lambda s: {"x": data}, steps=2, device="cpu")
    assert 0 < seconds < 60
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_a_run_saved_on_more_gpus_resumes_on_fewer(monkeypatch):
    """A checkpoint from a 2-GPU machine holds two CUDA generator states; Colab has one GPU.
    Before the fix, torch.cuda.set_rng_state_all indexed a GPU that is not there."""
    from cxlib.training.checkpoint import _rng_state, _set_rng_state

    state = _rng_state()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8), torch.ones(16, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device=0: restored.append((device, int(s[0]))))
    _set_rng_state(state)
    assert restored == [(0, 0)]


CYCLEGAN_DDP_SCRIPT = textwrap.dedent('''
    import os, sys, torch, cxlib
    torch.manual_seed(0)
    model = cxlib.training.CycleGAN(generator_width=4, blocks=1, discriminator_width=4, pool_size=4)
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    a = cxlib.training.StepBatches(cxlib.training.StackedImages(images[:4]), 1, seed=0)
    b = cxlib.training.StepBatches(cxlib.training.StackedImages(images[4:]), 1, seed=1)
    cxlib.training.train(model, cxlib.training.CycleGANObjective(),
                         lambda s: {"source": a(s), "target": b(s)}, steps=3, run_dir=sys.argv[1],
                         lr=2e-4, betas=(0.5, 0.999), progress=False, device="cpu")
    rank = os.environ["RANK"]
    torch.save({"pool": model.pool_b.images.clone(), "params": [p.detach() for p in model.parameters()]},
               os.path.join(sys.argv[1], f"rank{rank}.pt"))
''')


def test_cyclegan_under_torchrun_keeps_one_history_pool_per_rank(tmp_path):
    """DDP broadcasts buffers from rank 0 before every forward by default: every rank's history
    pool was replaced by rank 0's. CycleGAN asks train() not to; the parameters stay in sync."""
    run_on_two_ranks(CYCLEGAN_DDP_SCRIPT, tmp_path)
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    # Each rank stored the fakes of its own batches (steps 2s + r), the first two entries
    # included (with rank 0's pool broadcast before each step, those two would be equal).
    assert min((ranks[0]["pool"][k] - ranks[1]["pool"][k]).abs().max() for k in (0, 1)) > 1e-3
    for p, q in zip(ranks[0]["params"], ranks[1]["params"]):
        torch.testing.assert_close(p, q)
