"""The checks that need a GPU, in one command: ``python -m cxlib.gpu_check`` (or ``scripts/gpu-check``).

Run it the first time a GPU is at hand (about 5 minutes on one H100). It runs, on whatever GPUs
are present:

- ``fused-vs-reference``: the fused Triton kernels against the float64 reference (the blocked
  path in float64) and the float32 blocked path, values and gradients, N = 1,024 to 16,384, and
  the check that ``implementation="auto"`` would run before using them;
- ``tf32x3``: the kernels' opt-in three-TF32 products: their error against float64 (random
  points and near-duplicates) and their time against the IEEE kernels and the full path, which
  Triton's interpreter cannot measure (reported; it fails beyond ten times the IEEE kernels'
  tolerances);
- ``one-pass``: the kernels' opt-in one-pass backward (both gradient products from each tile's
  dL/dd, atomic adds for y's): its error against float64 with both gradients and with x's alone,
  and its time against the two-kernel backward and the full path (fails beyond the IEEE
  tolerances);
- ``fused-second-gpu``: the same on ``cuda:1`` while ``cuda:0`` is the current device (two GPUs);
- ``resume``: a short training run killed with SIGKILL and resumed, with and without AMP, ends
  where an uninterrupted run ends; a run saved without AMP resumes with it;
- ``amp``: under AMP the contextual loss trains with finite losses and a gradient scale that
  settles (how many first steps it skipped is reported), and a CycleGAN trained with AMP resumes
  without it;
- ``ddp``: two processes with NCCL average their gradients as one process would, and the
  documented ``torchrun ... -m cxlib.training`` command trains (two GPUs);
- ``chapter``: one training chapter at the fast setting on the GPU;
- ``benchmark``: ``cxlib.benchmark`` at N = 4,096 / 16,384 / 32,761 (C = 128) and 65,536
  (C = 64), written to ``data/benchmarks/<date>-<card>.json`` (the performance chapter draws it).

It prints one line per check and a final ``N passed, N failed, N skipped``; it exits with 1 if
any check failed. Without CUDA every check reports ``skipped: no CUDA`` (the CI dry run). The
same checks run in the test suite behind the ``gpu`` marker (``pytest -m gpu``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any
from dataclasses import dataclass
from pathlib import Path

import torch

from .contextual.fused_check import value_and_gradients

__all__ = ["CHECKS", "CheckFailed", "CheckSkipped", "main", "run_check"]

ROOT = Path(__file__).resolve().parent.parent


class CheckFailed(Exception):
    """A check ran and found something wrong."""


class CheckSkipped(Exception):
    """A check cannot run here (no CUDA, one GPU, a missing package)."""


def _need_gpus(count: int = 1) -> None:
    if not torch.cuda.is_available():
        raise CheckSkipped("no CUDA")
    if torch.cuda.device_count() < count:
        raise CheckSkipped(f"needs {count} GPUs, found {torch.cuda.device_count()}")


def _errors(got_value, got_grads, want_value, want_grads) -> tuple[float, float]:
    """Largest relative error of the values, and of the gradients relative to their largest entry
    (NaN if any is NaN: Python's max() would drop a NaN that is not first)."""
    value = ((got_value.double() - want_value.double()).abs() / want_value.double().abs()).max().item()
    grads = [((g.double() - w.double()).abs().max() / w.double().abs().max()).item()
             for g, w in zip(got_grads, want_grads)]
    grad = math.nan if any(math.isnan(e) for e in grads) else max(grads)
    return value, grad


def _compare_fused(device: torch.device, shapes, channels: int, *, value_rtol: float = 1e-5,
                   grad_rtol: float = 1e-4) -> list[str]:
    """Fused against float64 blocked and float32 blocked on ``device``; the worst errors per size."""
    lines = []
    for (hx, wx), (hy, wy) in shapes:
        generator = torch.Generator().manual_seed(hx * 1000 + wy)
        x = torch.randn(2, channels, hx, wx, generator=generator).to(device)
        y = torch.randn(2, channels, hy, wy, generator=generator).to(device)
        for distance in ("cosine", "l2"):
            fused = value_and_gradients(x, y, distance, "fused", band_width=0.5)
            reference = value_and_gradients(x.double(), y.double(), distance, "blocked",
                                            band_width=0.5)
            blocked = value_and_gradients(x, y, distance, "blocked", band_width=0.5)
            ref_value, ref_grad = _errors(*fused, *reference)
            blk_value, blk_grad = _errors(*fused, *blocked)
            where = f"N={hx * wx:,}x{hy * wy:,} C={channels} {distance}"
            if not (ref_value <= value_rtol and ref_grad <= grad_rtol):
                raise CheckFailed(f"{where}: fused vs float64 value error {ref_value:.1e} "
                                  f"(tolerance {value_rtol:.0e}), gradient error {ref_grad:.1e} "
                                  f"(tolerance {grad_rtol:.0e})")
            lines.append(f"{where}: vs float64 {ref_value:.1e}/{ref_grad:.1e}, "
                         f"vs blocked float32 {blk_value:.1e}/{blk_grad:.1e}")
    return lines


def check_fused_vs_reference() -> str:
    _need_gpus()
    from .contextual.fused import fused_available
    from .contextual.fused_check import fused_verdict

    device = torch.device("cuda", 0)
    if not fused_available(device):
        raise CheckFailed("Triton is missing or older than 3.0: the fused path cannot run")
    shapes = [((32, 32), (32, 32)), ((45, 47), (39, 41)), ((64, 64), (64, 64)), ((128, 128), (128, 128))]
    lines = _compare_fused(device, shapes, 128)
    verdict = {d: fused_verdict(device, d, torch.float32) for d in ("cosine", "l2")}
    bad = {d: v for d, v in verdict.items() if v is not None}
    if bad:
        raise CheckFailed(f"the check 'auto' runs refused the kernels: {bad}")
    return "max relative errors (value/gradient): " + "; ".join(lines)


def _time_ms(run, repeats: int = 5) -> float:
    """Median milliseconds of ``run()`` on the current CUDA device, after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


#: The IEEE kernels' tolerances (tests/test_fused.py); the tf32x3 check fails beyond ten times
#: them (or on a NaN), and otherwise reports its error.
TF32X3_VALUE_RTOL, TF32X3_GRAD_RTOL = 1e-5, 1e-4


def _variant_errors(device: torch.device, variants: Sequence[tuple[str, str]],
                    need_y: bool = True, size: int = 4096
                    ) -> tuple[list[str], dict[tuple[str, str], float]]:
    """Errors against float64 of the fused kernels launched as ``variants`` ((precision,
    backward) pairs) on random points and with near-duplicates (every third x_i a target plus
    1e-4 noise; where every point had its copy, CX would be 1 and every gradient 0), N = 4,096,
    C = 128, both distances; with ``need_y`` False only x's gradient (a fixed target). Lines of
    value/gradient errors, and each variant's worst error relative to the IEEE tolerances."""
    from .contextual.fused import fused_similarity
    from .contextual.full import Term, full_similarity

    generator = torch.Generator().manual_seed(20180)
    lines, worst = [], {v: 0.0 for v in variants}
    for distance in ("cosine", "l2"):
        for case in ("random", "near"):
            y = torch.randn(1, size, 128, generator=generator)
            x = torch.randn(y.shape, generator=generator)
            if case == "near":
                near = torch.arange(0, size, 3)
                targets = torch.randperm(size, generator=generator)[:len(near)]
                x[:, near] = y[:, targets] + 1e-4 * torch.randn(1, len(near), 128, generator=generator)
            if distance == "cosine":
                x, y = torch.nn.functional.normalize(x, dim=-1), torch.nn.functional.normalize(y, dim=-1)
            xd = x.double().to(device).requires_grad_()
            yd = y.double().to(device).requires_grad_(need_y)
            leaves = (xd, yd) if need_y else (xd,)
            want = full_similarity([Term(xd, yd, distance)], 0.5, 1e-5)
            want_grads = torch.autograd.grad(want.sum(), leaves)
            parts = []
            for precision, backward in variants:
                xf, yf = x.to(device).requires_grad_(), y.to(device).requires_grad_(need_y)
                got = fused_similarity(xf, yf, distance=distance, band_width=0.5, eps=1e-5,
                                       precision=precision, backward=backward)
                grads = torch.autograd.grad(got.sum(), (xf, yf) if need_y else (xf,))
                value, grad = _errors(got, grads, want, want_grads)
                parts.append(f"{precision}/{backward} {value:.1e}/{grad:.1e}")
                relative = max(value / TF32X3_VALUE_RTOL, grad / TF32X3_GRAD_RTOL)
                if not (math.isfinite(value) and math.isfinite(grad)):  # max() would drop a NaN
                    relative = math.inf
                worst[precision, backward] = max(worst[precision, backward], relative)
            lines.append(f"{distance} {case}: " + ", ".join(parts))
    return lines, worst


def _variant_times(device: torch.device, variants: Sequence[tuple[str, str]],
                   need_y: bool = True) -> str:
    """Forward + backward time of the fused kernels as ``variants`` and of the full path at
    N = 16,384, C = 128, cosine, in the same run."""
    from .contextual.fused import fused_similarity
    from .contextual.full import Term, full_similarity

    x = torch.nn.functional.normalize(torch.randn(1, 16384, 128, device=device), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(1, 16384, 128, device=device), dim=-1)

    def pass_of(compute):
        def run():
            xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_(need_y)
            torch.autograd.grad(compute(xr, yr).sum(), (xr, yr) if need_y else (xr,))
        return run

    times = {f"{p}/{b}": _time_ms(pass_of(lambda a, c, p=p, b=b: fused_similarity(
        a, c, distance="cosine", band_width=0.5, eps=1e-5, precision=p, backward=b)))
        for p, b in variants}
    times["full"] = _time_ms(pass_of(lambda a, c: full_similarity([Term(a, c, "cosine")], 0.5, 1e-5)))
    which = "x and y" if need_y else "x alone (fixed target)"
    return (f"N=16,384 C=128 cosine fwd+bwd, gradients of {which}: "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in times.items()))


def check_tf32x3() -> str:
    """The opt-in precision="tf32x3" of the fused kernels (three TF32 products on tensor cores),
    which Triton's interpreter cannot check: its error against float64 on random points and with
    near-duplicates (a third of the points a target plus 1e-4 noise), N = 4,096, C = 128, and its
    forward + backward time at
    N = 16,384, C = 128 against the IEEE kernels and the full path, in the same run."""
    _need_gpus()
    from .contextual.fused import fused_available

    device = torch.device("cuda", 0)
    if not fused_available(device) or torch.cuda.get_device_capability(device) < (8, 0):
        raise CheckSkipped("tf32x3 needs Triton and sm_80 or newer")
    variants = [("ieee", "two-kernels"), ("tf32x3", "two-kernels")]
    lines, worst = _variant_errors(device, variants)
    if not worst["tf32x3", "two-kernels"] <= 10:
        raise CheckFailed("tf32x3 beyond ten times the IEEE tolerances "
                          f"({worst['tf32x3', 'two-kernels']:.1f} times): " + "; ".join(lines))
    lines.append(_variant_times(device, variants))
    return "value/gradient errors vs float64; " + "; ".join(lines)


def check_one_pass() -> str:
    """The opt-in backward="one-pass" of the fused kernels (each tile's dL/dd formed once, its
    products with Y and X from it; atomic adds for y's gradient), which only a GPU can time and
    whose atomics only a GPU runs concurrently: its error against float64 with both gradients and
    with x's alone, and its time against the two-kernel backward and the full path, with and
    without y's gradient, in the same run. It fails where one-pass is beyond the IEEE kernels'
    tolerances (ten times them with tf32x3) and beyond twice the two-kernel backward's error at
    the same precision: a lost atomic update shows as far more than that."""
    _need_gpus()
    from .contextual.fused import fused_available

    device = torch.device("cuda", 0)
    if not fused_available(device):
        raise CheckFailed("Triton is missing or older than 3.0: the fused path cannot run")
    variants = [("ieee", "two-kernels"), ("ieee", "one-pass")]
    if torch.cuda.get_device_capability(device) >= (8, 0):
        variants += [("tf32x3", "two-kernels"), ("tf32x3", "one-pass")]
    lines = []
    for need_y in (True, False):
        found, worst = _variant_errors(device, variants, need_y=need_y)
        lines += [("x,y " if need_y else "x ") + line for line in found]
        limit = {"ieee": 1.0, "tf32x3": 10.0}
        bad = {f"{p}/{b}": w for (p, b), w in worst.items()
               if b == "one-pass" and not w <= max(limit[p], 2 * worst[p, "two-kernels"])}
        if bad:
            raise CheckFailed(f"one-pass beyond its tolerances (times the IEEE ones): {bad}; "
                              + "; ".join(lines))
    for need_y in (True, False):
        lines.append(_variant_times(device, variants, need_y=need_y))
    return "value/gradient errors vs float64; " + "; ".join(lines)


def check_fused_second_gpu() -> str:
    _need_gpus(2)
    device = torch.device("cuda", 1)
    torch.cuda.set_device(0)  # the kernels must follow the tensors, not the current device
    lines = _compare_fused(device, [((45, 47), (39, 41)), ((64, 64), (64, 64))], 96)
    if torch.cuda.current_device() != 0:
        raise CheckFailed("the fused path changed the current device")
    return "on cuda:1 with cuda:0 current: " + "; ".join(lines)


# A short training run for the resume check: a small CRN with the contextual animation loss.
def _train_worker(run_dir: str, steps: int, kill_at: int, amp: bool) -> None:
    import cxlib

    # As deterministic as CUDA allows: the CRN's bilinear upsampling has no deterministic
    # backward on CUDA (atomic adds), so two runs may differ in the last bits, and the check
    # compares them with a tolerance instead of exactly (the CPU test suite checks exactness).
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.manual_seed(0)
    size = 32
    photo = cxlib.book.images.load_image("astronaut", size)
    frames = cxlib.book.synthetic_video(photo, 8, seed=1)
    target = cxlib.book.images.load_image("chelsea", size)
    objective = cxlib.training.AnimationObjective(target, kind="contextual", weights=None)
    model = cxlib.CRN(cxlib.crn_config(size, wide=16, narrow=8, narrow_from=size))
    batches = cxlib.training.StepBatches(cxlib.training.StackedImages(frames), 2, seed=3)

    def callback(step, values):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    result = cxlib.training.train(model, objective, lambda s: {"source": batches(s)}, steps=steps,
                         run_dir=run_dir, lr=1e-3, checkpoint_every=3, amp=amp, progress=False,
                         callback=callback, device="cuda")
    torch.save({"losses": [h["loss"] for h in result.history],
                "params": [p.detach().cpu() for p in model.parameters()],
                "resumed_from": result.resumed_from}, Path(run_dir) / "final.pt")


def _run_train_worker(run_dir: Path, steps: int, kill_at: int = -1, amp: bool = False):
    env = dict(os.environ, CUBLAS_WORKSPACE_CONFIG=":4096:8", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "cxlib.gpu_check", "--worker", "train", str(run_dir),
               str(steps), str(kill_at)] + (["--amp"] if amp else [])
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def check_resume() -> str:
    _need_gpus()
    notes = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for amp in (False, True):
            tag = "amp" if amp else "fp32"
            straight = _run_train_worker(tmp / f"straight-{tag}", 10, amp=amp)
            if straight.returncode != 0:
                raise CheckFailed(f"{tag}: the uninterrupted run failed: {straight.stderr[-800:]}")
            killed = _run_train_worker(tmp / f"killed-{tag}", 10, kill_at=8, amp=amp)
            if killed.returncode != -signal.SIGKILL:
                raise CheckFailed(f"{tag}: the run was not killed ({killed.returncode}): {killed.stderr[-800:]}")
            resumed = _run_train_worker(tmp / f"killed-{tag}", 10, amp=amp)
            if resumed.returncode != 0:
                raise CheckFailed(f"{tag}: resuming failed: {resumed.stderr[-800:]}")
            want = torch.load(tmp / f"straight-{tag}" / "final.pt", weights_only=True)
            got = torch.load(tmp / f"killed-{tag}" / "final.pt", weights_only=True)
            if got["resumed_from"] != 6:
                raise CheckFailed(f"{tag}: resumed from step {got['resumed_from']}, expected 6")
            loss_diff = max(abs(a - b) / abs(b) for a, b in zip(got["losses"], want["losses"]))
            param_diff = max(((p - q).abs().max() / q.abs().max()).item()
                             for p, q in zip(got["params"], want["params"]))
            tolerance = 1e-3 if amp else 1e-4
            if len(got["losses"]) != 10 or loss_diff > tolerance or param_diff > tolerance:
                raise CheckFailed(f"{tag}: the resumed run differs from the straight one (loss by "
                                  f"{loss_diff:.1e}, parameters by {param_diff:.1e}, relative; "
                                  f"tolerance {tolerance:.0e})")
            notes.append(f"{tag}: resumed at step 6, ends as the straight run (relative "
                         f"differences: loss {loss_diff:.0e}, parameters {param_diff:.0e})")
        switched = tmp / "switched"
        for steps, amp in ((4, False), (8, True), (10, False)):
            done = _run_train_worker(switched, steps, amp=amp)
            if done.returncode != 0:
                raise CheckFailed(f"resuming with amp={amp} a run saved with amp={not amp} failed: "
                                  f"{done.stderr[-800:]}")
        notes.append("a run resumed with AMP switched on, then off")
    return "; ".join(notes)


_DDP_SCRIPT = '''
import os, sys, torch, cxlib
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(8, 3, 1))
data = cxlib.training.StackedImages(torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(1)))
batches = cxlib.training.StepBatches(data, 2, seed=5)
def loss_fn(m, b):
    out = m(b["x"])
    return cxlib.contextual_loss(out, b["x"]) + cxlib.l2_loss(out, b["x"])
result = cxlib.training.train(model, loss_fn, lambda s: {"x": batches(s)}, steps=3, run_dir=sys.argv[1],
                     lr=0.05, progress=False)
assert next(model.parameters()).device == torch.device("cuda", int(os.environ["LOCAL_RANK"]))
if int(os.environ["RANK"]) == 0:
    torch.save([p.detach().cpu() for p in model.parameters()], os.path.join(sys.argv[1], "params.pt"))
'''


def check_ddp() -> str:
    _need_gpus(2)
    import cxlib

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        script = tmp / "ddp.py"
        script.write_text(_DDP_SCRIPT)
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        done = subprocess.run([*torchrun, str(script), str(tmp / "run")], capture_output=True,
                              text=True, env=env, timeout=300)
        if done.returncode != 0:
            raise CheckFailed(f"two-process NCCL training failed: {done.stderr[-1200:]}")
        got = torch.load(tmp / "run" / "params.pt", weights_only=True)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Tanh(),
                                    torch.nn.Conv2d(8, 3, 1)).cuda()
        data = cxlib.training.StackedImages(torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(1)))
        batches = cxlib.training.StepBatches(data, 2, seed=5)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        for step in range(3):
            optimizer.zero_grad()
            loss: Any = 0  # a tensor after the first rank's term
            for rank in (0, 1):
                x = batches(2 * step + rank).cuda()
                out = model(x)
                loss = loss + (cxlib.contextual_loss(out, x) + cxlib.l2_loss(out, x)) / 2
            loss.backward()
            optimizer.step()
        diff = max((p.cpu() - q.detach().cpu()).abs().max().item() for p, q in zip(got, model.parameters()))
        if diff > 1e-4:
            raise CheckFailed(f"DDP's parameters differ from one process's by {diff:.1e}")
        # The documented command line, on two GPUs.
        photo = cxlib.book.images.load_image("astronaut", 32)
        video = cxlib.training.write_video(cxlib.book.synthetic_video(photo, 4), tmp / "clip.gif")
        look = tmp / "look.png"
        from torchvision.utils import save_image

        save_image(cxlib.book.images.load_image("chelsea", 32), look)
        command = [*torchrun, "-m", "cxlib.training", "animation", "--video", str(video), "--target",
                   str(look), "--size", "32", "--steps", "4", "--weights", "random", "--amp",
                   "--run-dir", str(tmp / "apps"), "--checkpoint-every", "2", "--sample-every", "2"]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        if done.returncode != 0:
            raise CheckFailed(f"torchrun -m cxlib.training failed: {done.stderr[-1200:]}")
        if cxlib.training.load_checkpoint(tmp / "apps" / "checkpoint.pt")["step"] != 4:
            raise CheckFailed("torchrun -m cxlib.training did not reach step 4")
    return f"NCCL, 2 ranks: parameters equal one process's to {diff:.0e}; torchrun -m cxlib.training trained 4 steps"


def check_amp(steps: int = 6) -> str:
    """AMP on the GPU: the contextual loss comes back in float32, so the gradient scaler's first
    scale (65536, above float16's largest number) does not overflow and skip the first steps; a
    CycleGAN trained with AMP resumes without it (its history pool keeps float32 images)."""
    _need_gpus()
    import cxlib

    device = torch.device("cuda", 0)
    notes = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        torch.manual_seed(0)
        photo = cxlib.book.images.load_image("astronaut", 32)
        frames = cxlib.book.synthetic_video(photo, 4, seed=1)
        objective = cxlib.training.AnimationObjective(cxlib.book.images.load_image("chelsea", 32),
                                                      weights=None)
        model = cxlib.CRN(cxlib.crn_config(32, wide=16, narrow=8, narrow_from=32))
        cxlib.training.train(model, objective, lambda s: {"source": frames[:2]}, steps=steps,
                             run_dir=tmp / "crn", lr=1e-3, amp=True, progress=False, device=device)
        state = cxlib.training.load_checkpoint(tmp / "crn" / "checkpoint.pt")
        scale = float(state["scaler"]["scale"])
        losses = [h["loss"] for h in state["history"]]
        # The scaler halves its scale after each overflowing step (skipped) until the float16
        # gradients fit: a few at the start are normal, a collapse is not.
        if scale < 2.0**10 or not all(math.isfinite(v) for v in losses):
            raise CheckFailed(f"the gradient scaler fell to {scale:g} in {steps} AMP steps of the "
                              f"contextual loss (losses {losses})")
        skipped = round(math.log2(65536.0 / scale))
        notes.append(f"CRN + contextual loss, {steps} AMP steps: scale {scale:g} "
                     f"({skipped} steps skipped while the scaler found its scale)")
        images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
        data_a = cxlib.training.StepBatches(cxlib.training.StackedImages(images[:4]), 1, seed=0)
        data_b = cxlib.training.StepBatches(cxlib.training.StackedImages(images[4:]), 1, seed=1)
        for total, amp in ((4, True), (12, False)):
            gan = cxlib.training.CycleGAN(generator_width=8, blocks=2, discriminator_width=8,
                                          pool_size=2)
            result = cxlib.training.train(
                gan, cxlib.training.CycleGANObjective(),
                lambda s: {"source": data_a(s), "target": data_b(s)}, steps=total,
                run_dir=tmp / "gan", lr=2e-4, betas=(0.5, 0.999), amp=amp, progress=False,
                device=device)
        if result.step != 12 or not all(math.isfinite(h["loss"]) for h in result.history):
            raise CheckFailed(f"CycleGAN AMP then fp32: step {result.step}, losses "
                              f"{[h['loss'] for h in result.history]}")
        notes.append("CycleGAN trained 4 steps with AMP, resumed to 12 without")
    return "; ".join(notes)


def check_chapter(notebook: str = "06_animation.ipynb") -> str:
    _need_gpus()
    path = ROOT / "book" / notebook
    if not path.is_file():
        raise CheckSkipped(f"{path} not found (run from a clone of the book)")
    try:
        import nbformat
        from nbclient import NotebookClient
    except ImportError as error:
        raise CheckSkipped(f"needs nbclient and nbformat ({error})") from None
    with tempfile.TemporaryDirectory() as tmp:
        # The kernel runs in book/: it imports this cxlib even where it is not installed.
        env = {"CXLIB_SETTING": "fast", "CXLIB_RUNS_DIR": tmp, "CXLIB_ALLOW_RANDOM_WEIGHTS": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        started = time.perf_counter()
        try:
            notebook_node = nbformat.read(path, as_version=4)
            NotebookClient(notebook_node, timeout=600, kernel_name="python3",
                           resources={"metadata": {"path": str(path.parent)}}).execute()
        except Exception as error:  # noqa: BLE001 - the cell's error is the finding
            raise CheckFailed(f"{notebook} failed: {str(error)[-1200:]}") from None
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    seconds = time.perf_counter() - started
    outputs = "".join(o.get("text", "") for c in notebook_node.cells if c.cell_type == "code"
                      for o in c.get("outputs", []))
    if "cuda" not in outputs:
        raise CheckFailed(f"{notebook} did not run on the GPU (its setting line names no cuda device)")
    return f"{notebook} at the fast setting on the GPU in {seconds:.0f} s"


def _card_slug() -> str:
    name = torch.cuda.get_device_name(0)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def check_benchmark(out_dir: Path | None = None) -> str:
    _need_gpus()
    from .benchmark import run_benchmark
    from .contextual.measured import fused_kernels_hash

    total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    implementations = ["full", "blocked", "fused"]
    rows = run_benchmark([4096, 16384, 32761], 128, implementations, device="cuda", repeats=5,
                         memory_limit_gib=0.9 * total_gib, progress=False)
    rows += run_benchmark([65536], 64, implementations, device="cuda", repeats=3,
                          memory_limit_gib=0.9 * total_gib, progress=False)
    failed = [m for m in rows if m.implementation != "full" and m.status != "ok"]
    record = {
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
        "channels": "128; 64 at N = 65,536", "batch": 1, "date": time.strftime("%Y-%m-%d"),
        "source": "python -m cxlib.gpu_check",
        # which fused kernels were measured: "auto" uses a fused time only for the same kernels
        "fused_kernels": fused_kernels_hash(),
        "measurements": [vars(m) for m in rows],
    }
    out_dir = out_dir or ROOT / "data" / "benchmarks"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{record['date']}-{_card_slug()}.json"
    path.write_text(json.dumps(record, indent=1))
    by = {(m.positions, m.implementation): m for m in rows}
    notes = []
    for n in (4096, 16384, 32761, 65536):
        parts = []
        for name in implementations:
            m = by[(n, name)]
            parts.append(f"{name} {m.time_ms:.1f} ms/{m.peak_mib:.0f} MiB" if m.status == "ok"
                         else f"{name} {m.status}")
        fused, blocked = by[(n, "fused")], by[(n, "blocked")]
        if fused.status == blocked.status == "ok":
            parts.append(f"fused/blocked time {fused.time_ms / blocked.time_ms:.2f}x")
        notes.append(f"N={n:,}: " + ", ".join(parts))
    if failed:
        raise CheckFailed(f"written to {path}, but these did not run: "
                          + ", ".join(f"{m.implementation} N={m.positions} {m.status} {m.note}" for m in failed))
    return f"written to {path}; " + "; ".join(notes)


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[], str]


#: The checks, in the order they run.
CHECKS = (
    Check("fused-vs-reference", check_fused_vs_reference),
    Check("tf32x3", check_tf32x3),
    Check("one-pass", check_one_pass),
    Check("fused-second-gpu", check_fused_second_gpu),
    Check("resume", check_resume),
    Check("amp", check_amp),
    Check("ddp", check_ddp),
    Check("chapter", check_chapter),
    Check("benchmark", check_benchmark),
)


def run_check(check: Check) -> tuple[str, str, float]:
    """Run one check: (``"passed"``, ``"failed"`` or ``"skipped"``, detail, seconds)."""
    started = time.perf_counter()
    try:
        detail = check.run()
        status = "passed"
    except CheckSkipped as why:
        status, detail = "skipped", str(why)
    except Exception as error:  # noqa: BLE001 - every failure is reported, the others still run
        status, detail = "failed", f"{type(error).__name__}: {error}" if not isinstance(error, CheckFailed) else str(error)
    return status, detail, time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxlib.gpu_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("checks", nargs="*", metavar="CHECK",
                        help=f"run only these ({', '.join(c.name for c in CHECKS)}); default: all")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--amp", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _, run_dir, steps, kill_at = args.worker
        _train_worker(run_dir, int(steps), int(kill_at), args.amp)
        return 0
    unknown = set(args.checks) - {c.name for c in CHECKS}
    if unknown:
        parser.error(f"unknown checks {sorted(unknown)}; choose from {[c.name for c in CHECKS]}")
    chosen = [c for c in CHECKS if not args.checks or c.name in args.checks]
    if torch.cuda.is_available():
        cards = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        print(f"GPU check on {cards}; torch {torch.__version__}", flush=True)
    else:
        print(f"GPU check: no CUDA on this machine; torch {torch.__version__}", flush=True)
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for check in chosen:
        status, detail, seconds = run_check(check)
        counts[status] += 1
        print(f"{status.upper():7} {check.name} ({seconds:.0f} s): {detail}" if status != "skipped"
              else f"SKIPPED {check.name}: skipped: {detail}", flush=True)
    print(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
