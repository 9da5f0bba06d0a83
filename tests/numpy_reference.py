"""An independent float64 NumPy implementation of the contextual similarity, for the tests.

Written straight from the paper's equations, with explicit broadcasting and no torch.
"""

from __future__ import annotations

import numpy as np


def point_sets(features: np.ndarray) -> np.ndarray:
    """(B, C, H, W) -> (B, H*W, C)."""
    b, c = features.shape[:2]
    return features.reshape(b, c, -1).transpose(0, 2, 1)


def distance_matrix(x: np.ndarray, y: np.ndarray, distance: str) -> np.ndarray:
    """d_ij for one sample, x (Nx, C), y (N, C), both centred by the mean of y."""
    mu = y.mean(axis=0)
    xc, yc = x - mu, y - mu
    if distance == "cosine":
        xn = xc / np.linalg.norm(xc, axis=1, keepdims=True)
        yn = yc / np.linalg.norm(yc, axis=1, keepdims=True)
        return 1.0 - xn @ yn.T
    diff = xc[:, None, :] - yc[None, :, :]
    if distance == "l2":
        return (diff**2).sum(axis=-1)
    if distance == "l1":
        return np.abs(diff).sum(axis=-1)
    raise ValueError(distance)


def contextual_intermediates(x: np.ndarray, y: np.ndarray, band_width: float, eps: float,
                             distance: str) -> dict[str, np.ndarray]:
    """Every step for one sample, x (Nx, C) and y (N, C) as point sets."""
    d = distance_matrix(x, y, distance)
    d_rel = d / (d.min(axis=1, keepdims=True) + eps)
    w = np.exp((1.0 - d_rel) / band_width)
    cx = w / w.sum(axis=1, keepdims=True)
    best = cx.max(axis=0)
    return {
        "distance": d,
        "relative_distance": d_rel,
        "weights": w,
        "similarity": cx,
        "best_match": cx.argmax(axis=0),
        "best_similarity": best,
        "score": best.mean(),
    }


def contextual_similarity(x: np.ndarray, y: np.ndarray, band_width: float = 0.5,
                          eps: float = 1e-5, distance: str = "cosine") -> np.ndarray:
    """CX(X, Y) per sample for feature maps (B, C, H, W)."""
    xs, ys = point_sets(np.asarray(x, np.float64)), point_sets(np.asarray(y, np.float64))
    return np.array([
        contextual_intermediates(xb, yb, band_width, eps, distance)["score"]
        for xb, yb in zip(xs, ys)
    ])


def positions(height: int, width: int) -> np.ndarray:
    """Pixel-centre coordinates in [0, 1], (H*W, 2), row-major."""
    rows, cols = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width,
                             indexing="ij")
    return np.stack([rows.ravel(), cols.ravel()], axis=1)


def bilateral_similarity_of_points(x: np.ndarray, y: np.ndarray, px: np.ndarray, py: np.ndarray,
                                   weight_sp: float, band_width: float = 0.5, eps: float = 1e-5,
                                   distance: str = "cosine", eps_sp: float | None = None) -> float:
    """CoBi's CX for one sample: points x (Nx, C), y (N, C) at coordinates px (Nx, 2), py (N, 2);
    the spatial term's eps is ``eps_sp`` (``None``: ``eps``)."""
    feat = contextual_intermediates(x, y, band_width, eps, distance)["similarity"]
    spatial = contextual_intermediates(px, py, band_width, eps if eps_sp is None else eps_sp,
                                       "l2")["similarity"]
    mixed = (1 - weight_sp) * feat + weight_sp * spatial
    return mixed.max(axis=0).mean()


def bilateral_similarity(x: np.ndarray, y: np.ndarray, weight_sp: float, band_width: float = 0.5,
                         eps: float = 1e-5, distance: str = "cosine",
                         eps_sp: float | None = None) -> np.ndarray:
    """CoBi's CX per sample: mix of feature and coordinate CX_ij before the max over i."""
    xs, ys = point_sets(np.asarray(x, np.float64)), point_sets(np.asarray(y, np.float64))
    px, py = positions(*x.shape[2:]), positions(*y.shape[2:])
    return np.array([
        bilateral_similarity_of_points(xb, yb, px, py, weight_sp, band_width, eps, distance, eps_sp)
        for xb, yb in zip(xs, ys)
    ])


def zoom_to_learn_cobi(generated: np.ndarray, target: np.ndarray, w_spatial: float = 0.1,
                       sigma: float = 0.5) -> float:
    """CoBi as the Zoom-to-Learn code computes it (``CX/CSFlow.py``, ``CX_loss`` with
    ``Distance.DotProduct``), transcribed step by step for one pair of (C, H, W) maps of one size.

    Features: centred by the target's mean, unit length per position, distance (1 - cos) / 2.
    Positions: one grid of (row / H, col / W) for both maps, squared Euclidean distance. Both:
    d / (min over the target positions + 1e-3), exp((1 - d~) / sigma), normalised over the
    target positions; mixed (1 - w) CS + w CS_sp; max over the generated positions, mean, -log.
    The code's grid is built with meshgrid's (x, y) order, which for a square map is the transpose
    of the features' layout on both sides alike (so it changes nothing); square maps only here.
    """
    g = np.asarray(generated, np.float64)
    t = np.asarray(target, np.float64)
    channels, height, width = t.shape
    if g.shape != t.shape or height != width:
        raise ValueError("the transcription covers square maps of one size")

    def similarity(raw):  # raw: (generated positions, target positions)
        relative = raw / (raw.min(axis=1, keepdims=True) + 1e-3)
        weights = np.exp((1.0 - relative) / sigma)
        return weights / weights.sum(axis=1, keepdims=True)

    mean_t = t.reshape(channels, -1).mean(axis=1)
    gi = (g.reshape(channels, -1).T - mean_t)
    ti = (t.reshape(channels, -1).T - mean_t)
    gi /= np.linalg.norm(gi, axis=1, keepdims=True)
    ti /= np.linalg.norm(ti, axis=1, keepdims=True)
    cs = similarity(-(gi @ ti.T - 1.0) / 2.0)

    rows, cols = np.arange(height) / height, np.arange(width) / width
    first, second = np.meshgrid(rows, cols)  # numpy's default "xy" order, as tf.meshgrid's
    grid = np.stack([first, second], axis=2).reshape(-1, 2)
    sq = (grid * grid).sum(axis=1)
    spatial_raw = np.maximum(0.0, sq[:, None] - 2.0 * grid @ grid.T + sq[None, :])
    cs_sp = similarity(spatial_raw)

    comb = cs * (1.0 - w_spatial) + cs_sp * w_spatial
    return float(-np.log(comb.max(axis=0).mean()))


def contextual_loss(x, y, band_width: float = 0.5, eps: float = 1e-5,
                    distance: str = "cosine") -> float:
    """-log CX(X, Y), averaged over the batch, for feature maps (B, C, H, W) (tensors or arrays);
    one target (1, C, H, W) serves every sample."""
    x, y = _as_array(x), _as_array(y)
    y = np.broadcast_to(y, (x.shape[0], *y.shape[1:]))
    return float(-np.log(contextual_similarity(x, y, band_width, eps, distance)).mean())


def mean_absolute_difference(x, y) -> float:
    """The L1 loss and the perceptual loss: mean |x - y| per sample, averaged over the batch."""
    x, y = _as_array(x), _as_array(y)
    return float(np.abs(x - np.broadcast_to(y, x.shape)).reshape(x.shape[0], -1).mean(1).mean())


def gram_loss(x, y) -> float:
    """Gatys et al.'s style loss, (1/4) sum (G(x) - G(y))^2 with G = F F^T / (C H W), averaged
    over the batch; one target serves every sample."""
    x, y = _as_array(x), _as_array(y)
    y = np.broadcast_to(y, (x.shape[0], *y.shape[1:]))
    out = []
    for a, b in zip(x, y):
        fa, fb = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        ga, gb = fa @ fa.T / fa.size, fb @ fb.T / fb.size
        out.append(((ga - gb) ** 2).sum() / 4)
    return float(np.mean(out))


def _as_array(t) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().cpu().double().numpy()
    return np.asarray(t, np.float64)
