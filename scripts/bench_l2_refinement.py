"""Cost of recomputing near-tie l2 rows in float64 (cxlib.contextual.distances): one forward +
backward pass of the contextual loss with distance="l2" in float32, with the refinement (what
cxlib does) and with the plain float32 expansion (what it did before), in the same run.

Usage: python scripts/bench_l2_refinement.py [--side 64] [--channels 64] [--device cpu]

Two cases: random features (no row is refined) and x = y + 1e-3 noise (every row is).
"""
import argparse
import time

import torch

import cxlib
import cxlib.contextual.distances as distances


def plain_expansion(x, y):
    return distances._l2_expansion(x, y).clamp_min(0.0)


def pass_time(x, y, implementation, device):
    xg = x.clone().requires_grad_()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    cxlib.contextual_loss(xg, y, distance="l2", implementation=implementation).backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=64, help="feature map side (N = side^2)")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    shape = (1, args.channels, args.side, args.side)
    y = (torch.randn(shape, generator=g) * 2).to(device)
    cases = {
        "random features": (torch.randn(shape, generator=g) * 2).to(device),
        "x = y + 1e-3 noise (all rows refined)": y + 1e-3 * torch.randn(shape, generator=g).to(device),
    }
    refined = distances._squared_euclidean
    print(f"l2, float32, forward + backward, N = {args.side ** 2:,}, C = {args.channels}, {device}")
    for implementation in ("full", "blocked"):
        for name, x in cases.items():
            times = {}
            for label, fn in (("plain", plain_expansion), ("refined", refined)):
                distances._squared_euclidean = fn
                try:
                    pass_time(x, y, implementation, device)  # warm-up
                    times[label] = min(pass_time(x, y, implementation, device)
                                       for _ in range(args.repeats))
                finally:
                    distances._squared_euclidean = refined
            print(f"{implementation:8s} {name:38s} plain {times['plain'] * 1e3:7.0f} ms"
                  f"  refined {times['refined'] * 1e3:7.0f} ms"
                  f"  ratio {times['refined'] / times['plain']:.2f}")


if __name__ == "__main__":
    main()
