"""Step time of the contextual losses with the input checks on (default) and off, on the CPU.

Usage: python scripts/bench_input_checks.py [--unchecked]
"""
import sys
import time

import torch

import cxlib

torch.manual_seed(0)
torch.set_num_threads(2)
kw = {"check_finite": False} if "--unchecked" in sys.argv[1:] else {}
def timeit(fn, reps):
    for _ in range(3): fn()
    t = []
    for _ in range(reps):
        s = time.perf_counter(); fn(); t.append(time.perf_counter() - s)
    t.sort(); return t[len(t) // 2] * 1e3
x = torch.randn(4, 64, 8, 8, requires_grad=True); y = torch.randn(4, 64, 8, 8)
def small():
    cxlib.contextual_loss(x, y, **kw).backward()
loss = cxlib.VGGContextualLoss(weights=None, **kw)
img = torch.rand(2, 3, 64, 64, requires_grad=True)
loss.fix_target(torch.rand(1, 3, 64, 64)); loss.fix_source(torch.rand(1, 3, 64, 64))
def vgg():
    loss(img).backward()
print(f"{kw}: contextual_loss 4x64x8x8 fwd+bwd median {timeit(small, 300):.3f} ms; "
      f"VGGContextualLoss 2x3x64x64 fwd+bwd median {timeit(vgg, 40):.1f} ms")
