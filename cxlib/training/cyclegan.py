"""CycleGAN (Zhu et al., ICCV 2017), compact: the method the paper compares its unpaired domain
transfer with (Table 1: four networks against one CRN and one loss).

Two generators G_AB and G_BA (ResNet generators: two stride-2 convolutions, residual blocks, two
transposed convolutions, instance normalisation), two PatchGAN discriminators D_A and D_B (70x70
receptive field with three layers), least-squares adversarial losses, an L1 cycle loss
(weight 10) and an L1 identity loss (weight 0.5 x 10), and a history of 50 generated images
that the discriminators also see, as the authors describe and publish them.

It trains with :func:`cxlib.training.train` (checkpoints, resumption, AMP, torchrun) like the
book's other networks. The authors update the generators, then the discriminators, each with its
own Adam (lr 2e-4, betas (0.5, 0.999)); both updates use the parameters from before the step
(the discriminators' step sees the fakes made before the generators' step). Here one loss and
one backward pass give the same gradients: the generators' adversarial term goes through the
discriminators with their parameters detached, the discriminators' terms see detached fakes.
Adam's update is per parameter, so one Adam over all parameters with the same settings is the
two Adams (``train(..., lr=2e-4, betas=(0.5, 0.999))``). The authors' learning rate decay over
the last 100 epochs is left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from .._checks import check_nonnegative, check_positive_int

__all__ = ["CycleGAN", "CycleGANObjective", "ImagePool", "PatchDiscriminator", "ResnetGenerator"]


def _conv_norm_relu(conv: nn.Module, width: int) -> list[nn.Module]:
    # Not in place: the block's input is read again by the residual sum.
    return [conv, nn.InstanceNorm2d(width), nn.ReLU()]


class _ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), *_conv_norm_relu(nn.Conv2d(width, width, 3), width),
            nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3), nn.InstanceNorm2d(width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's generator: a 7x7 convolution, ``downsamplings`` stride-2 convolutions,
    ``blocks`` residual blocks, as many transposed convolutions back, a 7x7 convolution and tanh.

    Images are in [0, 1] in and out (mapped to [-1, 1] inside, as the authors' code has them).

    Args:
        channels: image channels in and out.
        width: channels of the first convolution (the authors': 64); doubled at each
            downsampling.
        downsamplings: stride-2 convolutions (the authors': 2).
        blocks: residual blocks (the authors': 9 at 256 pixels, 6 at 128).

    Shape:
        - Input: (B, channels, H, W) with H and W divisible by 2 ** downsamplings.
        - Output: (B, channels, H, W) in [0, 1].

    Example:
        >>> import torch
        >>> from cxlib.training import ResnetGenerator
        >>> g = ResnetGenerator(width=8, blocks=2)
        >>> out = g(torch.rand(1, 3, 16, 16))
        >>> out.shape, bool(out.min() >= 0), bool(out.max() <= 1)
        (torch.Size([1, 3, 16, 16]), True, True)
    """

    def __init__(self, *, channels: int = 3, width: int = 64, downsamplings: int = 2,
                 blocks: int = 9) -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        width = check_positive_int("width", width)
        self.downsamplings = check_positive_int("downsamplings", downsamplings)
        blocks = check_positive_int("blocks", blocks)
        layers = [nn.ReflectionPad2d(3), *_conv_norm_relu(nn.Conv2d(channels, width, 7), width)]
        for k in range(downsamplings):
            w = width * 2**k
            layers += _conv_norm_relu(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), 2 * w)
        inner = width * 2**downsamplings
        layers += [_ResidualBlock(inner) for _ in range(blocks)]
        for k in range(downsamplings, 0, -1):
            w = width * 2**k
            layers += _conv_norm_relu(
                nn.ConvTranspose2d(w, w // 2, 3, stride=2, padding=1, output_padding=1), w // 2)
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        factor = 2**self.downsamplings
        if images.ndim != 4 or images.shape[1] != self.channels or images.shape[2] % factor \
                or images.shape[3] % factor or min(images.shape[2:]) < 2 * factor:
            # At least 2x2 positions at the bottom: reflection padding and instance
            # normalisation need them.
            raise ValueError(f"images must be (B, {self.channels}, H, W) with H and W divisible by "
                             f"{factor} and at least {2 * factor}, got shape {tuple(images.shape)}")
        return (self.net(images * 2 - 1) + 1) / 2


class PatchDiscriminator(nn.Module):
    """CycleGAN's PatchGAN discriminator: a real-or-fake score for each overlapping patch.

    A stride-2 4x4 convolution with LeakyReLU(0.2), ``layers - 1`` more with instance
    normalisation (channels doubling up to 8x ``width``), a stride-1 one, and a stride-1
    convolution to one channel. With ``layers=3`` each score sees a 70x70 patch.

    Args:
        channels: image channels.
        width: channels of the first convolution (the authors': 64).
        layers: stride-2 convolutions (the authors': 3).

    Shape:
        - Input: (B, channels, H, W) in [0, 1].
        - Output: (B, 1, H', W'), one score per patch.

    Example:
        >>> import torch
        >>> from cxlib.training import PatchDiscriminator
        >>> PatchDiscriminator(width=8)(torch.rand(1, 3, 64, 64)).shape
        torch.Size([1, 1, 6, 6])
    """

    def __init__(self, *, channels: int = 3, width: int = 64, layers: int = 3) -> None:
        super().__init__()
        check_positive_int("channels", channels)
        width = check_positive_int("width", width)
        layers = check_positive_int("layers", layers)
        blocks: list[nn.Module] = [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        previous = width
        for k in range(1, layers + 1):
            current = width * min(2**k, 8)
            stride = 2 if k < layers else 1
            blocks += [nn.Conv2d(previous, current, 4, stride=stride, padding=1),
                       nn.InstanceNorm2d(current), nn.LeakyReLU(0.2)]
            previous = current
        blocks.append(nn.Conv2d(previous, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*blocks)
        self.channels = channels
        # Instance normalisation needs more than one position after the last stride-1 layer.
        self.min_size = 3 * 2**layers

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != self.channels or min(images.shape[2:]) < self.min_size:
            raise ValueError(f"images must be (B, {self.channels}, H, W) with H, W >= {self.min_size}, "
                             f"got shape {tuple(images.shape)}")
        return self.net(images * 2 - 1)


class ImagePool(nn.Module):
    """The history of generated images the discriminators see (Shrivastava et al., 2017).

    Until ``size`` images are stored, each image passes through and is stored. Then each image
    is, with probability 1/2, returned as it is, else swapped with a random stored image (which is
    returned, and replaced by it). The stored images are buffers, so a checkpoint keeps them;
    the draws use torch's global generator, which :func:`cxlib.training.train` checkpoints.

    Under torchrun each rank keeps its own pool (:class:`CycleGAN` asks
    :func:`cxlib.training.train` not to broadcast its buffers); a checkpoint holds rank 0's,
    which every rank resumes with.

    Args:
        size: images kept; 0 passes every image through.

    Shape:
        - Input: (B, C, H, W); output: the same (detached).

    Example:
        >>> import torch
        >>> from cxlib.training import ImagePool
        >>> pool = ImagePool(4)
        >>> x = torch.rand(3, 3, 8, 8)
        >>> torch.equal(pool(x), x), int(pool.count)  # not full yet: passes through, stored
        (True, 3)
    """

    images: torch.Tensor  # buffers
    count: torch.Tensor

    def __init__(self, size: int = 50) -> None:
        super().__init__()
        self.size = int(check_nonnegative("size", size))
        self.register_buffer("images", torch.empty(0))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The stored images' shape is only known once images have passed: take the saved one.
        saved = state_dict.get(prefix + "images")
        if saved is not None:
            if saved.numel() and saved.shape[0] != self.size:
                raise ValueError(f"the saved image pool holds {saved.shape[0]} images, this one "
                                 f"{self.size}: resume with pool_size={saved.shape[0]}")
            self.images = torch.empty_like(saved, device=self.images.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.detach()
        if self.size == 0:
            return images
        if self.images.shape[1:] != images.shape[1:]:
            # float32 whatever the input (autocast's float16 now, float32 after a resume
            # without AMP): what is returned takes the input's dtype.
            self.images = images.new_zeros((self.size, *images.shape[1:]), dtype=torch.float32)
            self.count.zero_()
        count = int(self.count)
        out = []
        for image in images:
            if count < self.size:
                self.images[count] = image
                count += 1
                out.append(image)
            elif float(torch.rand(())) < 0.5:
                k = int(torch.randint(self.size, ()))
                out.append(self.images[k].to(images.dtype, copy=True))
                self.images[k] = image
            else:
                out.append(image)
        self.count.fill_(count)
        return torch.stack(out)


@dataclass
class CycleGANOutputs:
    """What :meth:`CycleGAN.forward` computes for one batch of each domain (A, B).

    Attributes:
        fake_a, fake_b: G_BA(b), G_AB(a).
        cycled_a, cycled_b: G_BA(G_AB(a)), G_AB(G_BA(b)).
        identity_a, identity_b: G_BA(a), G_AB(b) (``None`` when not asked for).
        fake_a_score, fake_b_score: D_A(fake_a), D_B(fake_b) with the discriminators' parameters
            detached: the generators' adversarial terms (no gradient reaches the discriminators).
        real_a_score, real_b_score: D_A(a), D_B(b).
        pooled_a_score, pooled_b_score: the discriminators on detached fakes from the history:
            their terms (no gradient reaches the generators).
    """

    fake_a: torch.Tensor
    fake_b: torch.Tensor
    cycled_a: torch.Tensor
    cycled_b: torch.Tensor
    identity_a: torch.Tensor | None
    identity_b: torch.Tensor | None
    fake_a_score: torch.Tensor
    fake_b_score: torch.Tensor
    real_a_score: torch.Tensor
    real_b_score: torch.Tensor
    pooled_a_score: torch.Tensor
    pooled_b_score: torch.Tensor


def _frozen(module: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``module(images)`` with the module's parameters detached: gradients reach the images only."""
    params = {name: p.detach() for name, p in module.named_parameters()}
    return functional_call(module, params, (images,))


class CycleGAN(nn.Module):
    """The four networks of CycleGAN and the history pools, in one module.

    Called with one batch, ``model(a)`` translates A to B (what the sample grids and a trained
    network's user want). Called with a batch of each domain, ``model(a, b)`` runs everything one
    training step needs and returns :class:`CycleGANOutputs`; :class:`CycleGANObjective` turns
    them into the loss. Everything runs inside ``forward``, so DistributedDataParallel sees it.

    Args:
        channels: image channels.
        generator_width: see :class:`ResnetGenerator` (the authors': 64).
        blocks: residual blocks per generator (the authors': 9 at 256 pixels, 6 at 128).
        downsamplings: see :class:`ResnetGenerator`.
        discriminator_width: see :class:`PatchDiscriminator` (the authors': 64).
        discriminator_layers: see :class:`PatchDiscriminator` (the authors': 3).
        pool_size: generated images each discriminator's history keeps (the authors': 50).

    Shape:
        - a, b: (B, channels, H, W) in [0, 1].
        - Output: G_AB(a) (B, channels, H, W), or :class:`CycleGANOutputs`.

    Example:
        >>> import torch
        >>> from cxlib.training import CycleGAN
        >>> model = CycleGAN(generator_width=8, blocks=2, discriminator_width=8)
        >>> model(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 3, 32, 32])
        >>> model(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)).real_b_score.shape
        torch.Size([2, 1, 2, 2])
    """

    #: Read by :func:`cxlib.training.train`: under torchrun each rank keeps its own history
    #: pool instead of receiving rank 0's before every step.
    broadcast_buffers = False

    def __init__(self, *, channels: int = 3, generator_width: int = 64, blocks: int = 9,
                 downsamplings: int = 2, discriminator_width: int = 64,
                 discriminator_layers: int = 3, pool_size: int = 50) -> None:
        super().__init__()
        generator = {"channels": channels, "width": generator_width, "blocks": blocks,
                     "downsamplings": downsamplings}
        discriminator = {"channels": channels, "width": discriminator_width,
                         "layers": discriminator_layers}
        self.g_ab = ResnetGenerator(**generator)
        self.g_ba = ResnetGenerator(**generator)
        self.d_a = PatchDiscriminator(**discriminator)
        self.d_b = PatchDiscriminator(**discriminator)
        self.pool_a = ImagePool(pool_size)
        self.pool_b = ImagePool(pool_size)

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None, *,
                identity: bool = True) -> torch.Tensor | CycleGANOutputs:
        if b is None:
            return self.g_ab(a)
        fake_b, fake_a = self.g_ab(a), self.g_ba(b)
        return CycleGANOutputs(
            fake_a=fake_a, fake_b=fake_b,
            cycled_a=self.g_ba(fake_b), cycled_b=self.g_ab(fake_a),
            identity_a=self.g_ba(a) if identity else None,
            identity_b=self.g_ab(b) if identity else None,
            fake_a_score=_frozen(self.d_a, fake_a), fake_b_score=_frozen(self.d_b, fake_b),
            real_a_score=self.d_a(a), real_b_score=self.d_b(b),
            pooled_a_score=self.d_a(self.pool_a(fake_a)), pooled_b_score=self.d_b(self.pool_b(fake_b)),
        )


def _least_squares(scores: torch.Tensor, label: float) -> torch.Tensor:
    return (scores.float() - label).square().mean()


class CycleGANObjective(nn.Module):
    r"""CycleGAN's losses for :func:`cxlib.training.train`: the generators' and the
    discriminators' in one sum whose gradients are each network's own.

    .. math::

        \mathcal{L}_G = \mathrm{E}(D_B(G_{AB}(a)) - 1)^2 + \mathrm{E}(D_A(G_{BA}(b)) - 1)^2
        + \lambda (\lVert G_{BA}(G_{AB}(a)) - a\rVert_1 + \lVert G_{AB}(G_{BA}(b)) - b\rVert_1)
        + \lambda \lambda_{id} (\lVert G_{BA}(a) - a\rVert_1 + \lVert G_{AB}(b) - b\rVert_1)

        \mathcal{L}_D = \tfrac12 [\mathrm{E}(D_B(b) - 1)^2 + \mathrm{E}\, D_B(\tilde b)^2]
        + \tfrac12 [\mathrm{E}(D_A(a) - 1)^2 + \mathrm{E}\, D_A(\tilde a)^2]

    with :math:`\tilde a, \tilde b` fakes from the history; :math:`\mathcal{L}_G` reaches the
    generators only and :math:`\mathcal{L}_D` the discriminators only (see :class:`CycleGAN`).

    Args:
        cycle_weight: :math:`\lambda` (the authors': 10).
        identity_weight: :math:`\lambda_{id}`, relative to :math:`\lambda` (the authors': 0.5);
            0 for none.

    Shape:
        - The batch: ``{"source": domain A (B, 3, H, W), "target": domain B (B, 3, H, W)}``,
          unpaired; the output: (the loss, a dict of its terms).

    Example:
        >>> import torch
        >>> from cxlib.training import CycleGAN, CycleGANObjective
        >>> model = CycleGAN(generator_width=8, blocks=2, discriminator_width=8)
        >>> batch = {"source": torch.rand(2, 3, 32, 32), "target": torch.rand(2, 3, 32, 32)}
        >>> loss, logs = CycleGANObjective()(model, batch)
        >>> sorted(logs)
        ['D', 'G/adversarial', 'G/cycle', 'G/identity']
    """

    def __init__(self, *, cycle_weight: float = 10.0, identity_weight: float = 0.5) -> None:
        super().__init__()
        self.cycle_weight = check_nonnegative("cycle_weight", cycle_weight)
        self.identity_weight = check_nonnegative("identity_weight", identity_weight)

    def forward(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        a, b = batch["source"], batch["target"]
        out = model(a, b, identity=self.identity_weight > 0)
        adversarial = _least_squares(out.fake_b_score, 1.0) + _least_squares(out.fake_a_score, 1.0)
        cycle = (out.cycled_a.float() - a).abs().mean() + (out.cycled_b.float() - b).abs().mean()
        identity = torch.zeros((), device=a.device)
        if self.identity_weight > 0:
            identity = (out.identity_a.float() - a).abs().mean() + (out.identity_b.float() - b).abs().mean()
        generators = adversarial + self.cycle_weight * (cycle + self.identity_weight * identity)
        discriminators = 0.5 * (_least_squares(out.real_b_score, 1.0) + _least_squares(out.pooled_b_score, 0.0)) \
            + 0.5 * (_least_squares(out.real_a_score, 1.0) + _least_squares(out.pooled_a_score, 0.0))
        logs = {"G/adversarial": adversarial, "G/cycle": cycle, "G/identity": identity, "D": discriminators}
        return generators + discriminators, {k: float(v.detach()) for k, v in logs.items()}
