"""VGG19 features: names, pre-ReLU conv outputs, torchvision equality, and the weights' paths."""

from __future__ import annotations

import copy
import os
import urllib.error
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

import cxlib
from cxlib.vgg import IMAGENET_FILE, VGG19_LAYERS, imagenet_weights_path, imagenet_weights_status

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def torchvision_model():
    """torchvision's own VGG19 with its own (seeded) random initialisation."""
    torch.manual_seed(123)
    return torchvision.models.vgg19(weights=None).eval()


@pytest.fixture(scope="module")
def torchvision_state(torchvision_model):
    """Its state dict in the layout of torchvision's checkpoint file: features.* and
    classifier.* keys (the classifier's tensors shrunk: they are only there to be ignored)."""
    state = {key: value for key, value in torchvision_model.state_dict().items()
             if key.startswith("features.")}
    state.update({"classifier.0.weight": torch.zeros(2, 2), "classifier.0.bias": torch.zeros(2)})
    return state


def _torchvision_reference(model, inplace: bool, avg_pool: bool = False):
    """torchvision's VGG19 with every node of ``features`` returned under our layer names."""
    features = copy.deepcopy(model.features)
    for index, module in enumerate(features):
        if isinstance(module, torch.nn.ReLU):
            module.inplace = inplace
        if avg_pool and isinstance(module, torch.nn.MaxPool2d):
            features[index] = torch.nn.AvgPool2d(2, 2)
    nodes = {str(i): name for i, name in enumerate(VGG19_LAYERS)}
    return create_feature_extractor(features, return_nodes=nodes)


def test_layer_names_follow_torchvision_numbering(torchvision_model):
    assert len(VGG19_LAYERS) == 37
    assert VGG19_LAYERS[:5] == ("conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1")
    assert VGG19_LAYERS[21] == "conv4_2" and VGG19_LAYERS[36] == "pool5"
    model = torchvision_model
    for index, name in enumerate(VGG19_LAYERS):
        kind = type(model.features[index]).__name__
        assert kind == {"conv": "Conv2d", "relu": "ReLU", "pool": "MaxPool2d"}[name[:4]]


def test_unknown_layer_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"unknown VGG19 layer 'conv4_5'; valid names: conv1_1, relu1_1,.*pool5"):
        cxlib.VGG19Features(["conv4_2", "conv4_5"], weights=None)
    with pytest.raises(ValueError, match="at least one layer"):
        cxlib.VGG19Features([], weights=None)


def test_network_is_cut_after_the_deepest_layer_and_frozen():
    vgg = cxlib.VGG19Features(["relu2_1", "conv1_1"], weights=None)
    assert len(vgg.features) == VGG19_LAYERS.index("relu2_1") + 1
    assert all(not p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert not vgg.training
    assert set(vgg.state_dict()) == {f"features.{i}.{p}" for i in (0, 2, 5) for p in ("weight", "bias")}
    # Outputs come back in the order asked for.
    assert list(vgg(torch.rand(1, 3, 8, 8))) == ["relu2_1", "conv1_1"]


def test_conv_outputs_are_taken_before_the_relu():
    layers = ["conv1_1", "relu1_1", "conv3_2", "relu3_2"]
    out = cxlib.VGG19Features(layers, weights=None)(torch.rand(2, 3, 24, 24))
    for block in ("1_1", "3_2"):
        conv, relu = out[f"conv{block}"], out[f"relu{block}"]
        assert (conv < 0).any(), "a pre-ReLU output must have negative values"
        assert (relu >= 0).all()
        torch.testing.assert_close(relu, conv.clamp_min(0), rtol=0, atol=0)


def test_torchvision_in_place_relu_would_have_lost_the_negatives(torchvision_model):
    # The trap this module avoids: with torchvision's in-place ReLUs, a stored conv output is
    # overwritten by its ReLU.
    images = (torch.rand(1, 3, 32, 32) - MEAN) / STD
    with torch.no_grad():
        inplace_conv = _torchvision_reference(torchvision_model, inplace=True)(images)["conv1_1"]
        true_conv = _torchvision_reference(torchvision_model, inplace=False)(images)["conv1_1"]
    assert (inplace_conv >= 0).all() and (true_conv < 0).any()


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_features_equal_torchvision_at_every_node(tmp_path, torchvision_model, torchvision_state,
                                                  pooling):
    path = tmp_path / "vgg19_random.pth"
    torch.save(torchvision_state, path)
    ours = cxlib.VGG19Features(VGG19_LAYERS, weights=path, pooling=pooling)
    assert ours.pretrained and ours.weights_source == "file vgg19_random.pth"
    reference = _torchvision_reference(torchvision_model, inplace=False, avg_pool=pooling == "avg")
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        got = ours(images)
        want = reference((images - MEAN) / STD)
    for name in VGG19_LAYERS:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5)


def test_avg_pooling_averages():
    out = cxlib.VGG19Features(["relu1_2", "pool1"], weights=None, pooling="avg")(torch.rand(1, 3, 8, 8))
    torch.testing.assert_close(out["pool1"], F.avg_pool2d(out["relu1_2"], 2))


def test_random_weights_are_seeded_and_gradients_reach_the_image():
    a = cxlib.VGG19Features(["conv2_1"], weights=None)
    b = cxlib.VGG19Features(["conv2_1"], weights=None)
    assert not a.pretrained and a.weights_source.startswith("random")
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    images = torch.rand(1, 3, 8, 8, requires_grad=True)
    a(images)["conv2_1"].square().sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_imagenet_path_loads_from_the_torch_home_cache(torchvision_model, torchvision_state):
    # The real torchvision loading path, offline: the file torchvision would download, written
    # to the cache under a temporary TORCH_HOME (the conftest refuses any download).
    path = imagenet_weights_path()
    assert path.parent == torch.hub.get_dir() / type(path)("checkpoints")
    assert path.name == IMAGENET_FILE and str(path).startswith(os.environ["TORCH_HOME"])
    path.parent.mkdir(parents=True)
    torch.save(torchvision_state, path)
    vgg = cxlib.VGG19Features(["conv1_1", "relu5_4"])
    assert vgg.pretrained and vgg.weights_source == "ImageNet"
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        want = _torchvision_reference(torchvision_model, inplace=False)((images - MEAN) / STD)
        got = vgg(images)
    torch.testing.assert_close(got["relu5_4"], want["relu5_4"], rtol=1e-5, atol=1e-5)


def test_corrupted_cached_file_gives_a_clear_error():
    path = imagenet_weights_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(cxlib.WeightsUnavailableError, match="probably corrupted or truncated: delete it") as info:
        cxlib.VGG19Features(["conv1_1"])
    assert str(path) in str(info.value)


def _no_network(monkeypatch):
    def unreachable(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)


def test_offline_without_the_file_says_which_file_to_put_where(monkeypatch):
    _no_network(monkeypatch)
    with pytest.raises(cxlib.WeightsUnavailableError) as info:
        cxlib.VGG19Features(["conv4_2"])
    message = str(info.value)
    assert f"put the file {IMAGENET_FILE}" in message
    assert str(imagenet_weights_path()) in message
    assert "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth" in message
    assert "CXLIB_ALLOW_RANDOM_WEIGHTS=1" in message


def test_offline_fallback_warns_once_and_uses_seeded_random_weights(monkeypatch):
    _no_network(monkeypatch)
    monkeypatch.setenv("CXLIB_ALLOW_RANDOM_WEIGHTS", "1")
    with pytest.warns(cxlib.RandomWeightsWarning, match="seeded random weights"):
        first = cxlib.VGG19Features(["conv2_2"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = cxlib.VGG19Features(["conv2_2"])
    assert not first.pretrained and not second.pretrained
    assert "ImageNet weights were unavailable" in first.weights_source
    random = cxlib.VGG19Features(["conv2_2"], weights=None)
    for p, q in zip(first.parameters(), random.parameters()):
        assert torch.equal(p, q)


def test_local_state_dict_is_matched_strictly(tmp_path, torchvision_state):
    missing = dict(torchvision_state)
    del missing["features.2.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(cxlib.WeightsUnavailableError, match=r"missing keys \['features.2.weight'\]"):
        cxlib.VGG19Features(["conv1_2"], weights=tmp_path / "missing.pth")
    extra = dict(torchvision_state, **{"features.99.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(cxlib.WeightsUnavailableError, match=r"unexpected keys \['features.99.weight'\]"):
        cxlib.VGG19Features(["conv1_2"], weights=str(tmp_path / "extra.pth"))
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(cxlib.WeightsUnavailableError, match="holds a list, expected a state dict"):
        cxlib.VGG19Features(["conv1_2"], weights=tmp_path / "list.pth")
    with pytest.raises(FileNotFoundError, match="no such file"):
        cxlib.VGG19Features(["conv1_2"], weights=tmp_path / "absent.pth")
    with pytest.raises(TypeError, match="weights must be 'imagenet', None or a path"):
        cxlib.VGG19Features(["conv1_2"], weights=3)


def test_bad_images_and_pooling():
    vgg = cxlib.VGG19Features(["conv1_1"], weights=None)
    with pytest.raises(ValueError, match=r"images must have 3 channels \(RGB\), got shape \(1, 1, 8, 8\)"):
        vgg(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="must be a 4-D tensor"):
        vgg(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="pooling must be one of 'max', 'avg', got 'mean'"):
        cxlib.VGG19Features(["conv1_1"], weights=None, pooling="mean")


def test_normalisation_buffers_are_not_saved():
    vgg = cxlib.VGG19Features(["conv1_1"], weights=None)
    assert "mean" not in vgg.state_dict() and "std" not in vgg.state_dict()
    torch.testing.assert_close(vgg.mean.flatten(), MEAN.flatten())


def test_weights_status_says_which_weights_a_chapter_gets(monkeypatch, torchvision_state):
    _no_network(monkeypatch)
    with pytest.raises(cxlib.WeightsUnavailableError, match="could not be downloaded"):
        imagenet_weights_status()
    monkeypatch.setenv("CXLIB_ALLOW_RANDOM_WEIGHTS", "1")
    assert imagenet_weights_status().startswith("RANDOM (seed 0; the ImageNet weights were unavailable")
    imagenet_weights_path().parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision_state, imagenet_weights_path())
    assert imagenet_weights_status() == "ImageNet"
    monkeypatch.setenv("CXLIB_VGG_WEIGHTS", "random")  # random on purpose, although cached
    assert imagenet_weights_status() == "RANDOM (seed 0; CXLIB_VGG_WEIGHTS=random)"
    vgg = cxlib.VGG19Features(["conv1_1"])
    assert not vgg.pretrained and vgg.weights_source == imagenet_weights_status()
    random = cxlib.VGG19Features(["conv1_1"], weights=None)
    assert all(torch.equal(p, q) for p, q in zip(vgg.parameters(), random.parameters()))
    monkeypatch.setenv("CXLIB_VGG_WEIGHTS", "imagenett")
    with pytest.raises(ValueError, match="CXLIB_VGG_WEIGHTS must be 'imagenet', 'random' or unset, got 'imagenett'"):
        imagenet_weights_status()
