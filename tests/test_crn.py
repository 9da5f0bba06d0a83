"""The Cascaded Refinement Network: its config list, its wiring and its parameter count."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import cxlib


def test_paper_config():
    assert cxlib.CRN_256 == ((4, 512), (8, 512), (16, 512), (32, 512), (64, 512), (128, 256), (256, 256))
    assert cxlib.crn_config(8, wide=6, narrow=3, narrow_from=8) == ((4, 6), (8, 3))
    with pytest.raises(ValueError, match="power of two >= 4, got 48"):
        cxlib.crn_config(48)
    with pytest.raises(ValueError, match="resolutions must double from 4"):
        cxlib.CRN([(4, 8), (16, 8)])


def test_parameter_count_of_the_paper_network():
    net = cxlib.CRN()
    want, previous = 0, 0
    for _, channels in cxlib.CRN_256:
        want += (3 + previous) * channels * 9 + channels  # first 3x3 conv
        want += channels * channels * 9 + channels          # second 3x3 conv
        want += 2 * 2 * channels                            # two layer norms (scale, shift)
        previous = channels
    want += previous * 3 + 3                                # 1x1 conv to RGB
    assert sum(p.numel() for p in net.parameters()) == want
    assert net.output_size == 256


def _layer_norm(x, norm):
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    var = x.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)


def _by_hand(net, image):
    """The CRN's forward pass written out: area down, bilinear up, concat, two conv-LN-LReLU."""
    features = None
    for (resolution, _), module in zip(net.config, net.refinement):
        x = F.interpolate(image, size=(resolution, resolution), mode="area")
        if features is not None:
            up = F.interpolate(features, size=(resolution, resolution), mode="bilinear", align_corners=False)
            x = torch.cat([x, up], dim=1)
        for conv, norm in ((module.conv1, module.norm1), (module.conv2, module.norm2)):
            x = F.conv2d(x, conv.weight, conv.bias, padding=1)
            x = _layer_norm(x, norm)
            x = torch.where(x > 0, x, 0.2 * x)
        features = x
    return F.conv2d(features, net.to_rgb.weight, net.to_rgb.bias)


def test_forward_matches_the_architecture_written_out():
    net = cxlib.CRN(cxlib.crn_config(16, wide=6, narrow=4, narrow_from=16), in_channels=1).double()
    for p in net.parameters():  # non-trivial affine parameters of the norms too
        p.data.normal_(0, 0.3)
    image = torch.rand(2, 1, 24, 20, dtype=torch.float64)
    torch.testing.assert_close(net(image), _by_hand(net, image), rtol=1e-10, atol=1e-10)
    assert net(image).shape == (2, 3, 16, 16)


def test_gradients_reach_every_parameter_and_bad_input_is_refused():
    net = cxlib.CRN(cxlib.crn_config(8, wide=4, narrow=4))
    net(torch.rand(1, 3, 8, 8)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    with pytest.raises(ValueError, match=r"image must have 3 channels, got shape \(1, 1, 8, 8\)"):
        net(torch.rand(1, 1, 8, 8))
