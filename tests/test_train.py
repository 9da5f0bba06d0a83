"""The training loop: a run killed with SIGKILL resumes and ends exactly where an uninterrupted run
ends; checkpoints load with weights_only; DistributedDataParallel under torchrun averages the
gradients of its ranks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
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
    data = cxlib.StackedImages(torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1)))
    batches = cxlib.StepBatches(data, 2, seed=3)

    def loss_fn(model, batch):
        noise = 0.05 * torch.randn(batch["x"].shape)  # uses the global generator
        return cxlib.l1_loss(model(batch["x"] + noise), batch["x"])

    def callback(step, values):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    result = cxlib.train(model, loss_fn, lambda s: {"x": batches(s)}, steps=steps, run_dir=run_dir,
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
    checkpoint = cxlib.load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
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
    state = cxlib.load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert set(state) == {"model", "optimizer", "scaler", "step", "history", "rng"}
    assert state["step"] == 4 and len(state["history"]) == 4
    again = _run(tmp_path, tmp_path / "run", 4)
    assert again.returncode == 0
    final = torch.load(tmp_path / "run" / "final.pt", weights_only=True)
    assert final["resumed_from"] == 4 and len(final["losses"]) == 4


def test_mixed_precision_on_the_cpu_trains(tmp_path):
    model = cxlib.CRN(cxlib.crn_config(8, wide=4, narrow=4))
    data = torch.rand(4, 3, 8, 8)
    result = cxlib.train(model, lambda m, b: cxlib.l1_loss(m(b["x"]).float(), b["x"]),
                         lambda s: {"x": data}, steps=20, run_dir=tmp_path, lr=1e-2, amp=True,
                         progress=False, device="cpu")
    losses = [h["loss"] for h in result.history]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_bad_arguments(tmp_path):
    model = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        cxlib.train(model, lambda m, b: m(b["x"]).sum(), lambda s: {}, steps=0, run_dir=tmp_path)
    with pytest.raises(ValueError, match="fewer than batch_size=5"):
        cxlib.StepBatches(cxlib.StackedImages(torch.rand(3, 3, 2, 2)), 5)


DDP_SCRIPT = textwrap.dedent('''
    import os, sys, torch, cxlib
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(4, 3, 1))
    data = cxlib.StackedImages(torch.rand(12, 3, 6, 6, generator=torch.Generator().manual_seed(1)))
    batches = cxlib.StepBatches(data, 2, seed=5)
    result = cxlib.train(model, lambda m, b: cxlib.l2_loss(m(b["x"]), b["x"]),
                         lambda s: {"x": batches(s)}, steps=3, run_dir=sys.argv[1], lr=0.05,
                         progress=False, device="cpu")
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save([p.detach() for p in model.parameters()], os.path.join(sys.argv[1], "params.pt"))
''')


def test_distributed_data_parallel_averages_the_ranks_gradients(tmp_path):
    script = tmp_path / "ddp_script.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(script), str(tmp_path / "ddp")],
                          capture_output=True, text=True, env=env, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = torch.load(tmp_path / "ddp" / "params.pt", weights_only=True)
    assert (tmp_path / "ddp" / "checkpoint.pt").is_file()

    # The same three steps in one process: step s of rank r used batch 2s + r, and DDP averages
    # the two ranks' gradients, which is the gradient of the mean of the two batches' losses.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(4, 3, 1))
    data = cxlib.StackedImages(torch.rand(12, 3, 6, 6, generator=torch.Generator().manual_seed(1)))
    batches = cxlib.StepBatches(data, 2, seed=5)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for step in range(3):
        optimizer.zero_grad()
        loss = sum(cxlib.l2_loss(model(batches(2 * step + r)), batches(2 * step + r)) for r in (0, 1)) / 2
        loss.backward()
        optimizer.step()
    for p, q in zip(got, model.parameters()):
        torch.testing.assert_close(p, q.detach(), rtol=1e-5, atol=1e-6)
