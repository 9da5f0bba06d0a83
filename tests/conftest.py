import os
import sys
from pathlib import Path

# The fused Triton kernels run under Triton's interpreter on a machine without a GPU. It must be
# chosen before the kernels are defined (when cxlib is first imported).
if os.environ.get("CXLIB_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

# The NumPy reference lives beside the tests.
sys.path.insert(0, str(Path(__file__).parent))


class NetworkUsedError(RuntimeError):
    pass


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No test touches the network, nor the developer's own TORCH_HOME cache."""

    def refuse(url, *args, **kwargs):
        raise NetworkUsedError(f"tests must not download ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for name in ("CXLIB_ALLOW_RANDOM_WEIGHTS", "CXLIB_VGG_WEIGHTS", "CXLIB_SEED", "CXLIB_RUNS_DIR"):
        monkeypatch.delenv(name, raising=False)
    import cxlib.vgg

    monkeypatch.setattr(cxlib.vgg, "_warned_random", False)
    monkeypatch.setattr(cxlib.vgg, "_download_failed", False)
