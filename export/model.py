"""ISNet (DIS) and its GT encoder, written once from a spec table.

The module names and parameter shapes follow the official ``ISNetDIS`` exactly, so official
checkpoints (``isnet-general-use.pth``, ``isnet.pth``) load without renaming; see
``tests/export/test_model.py`` for the check against the reference manifest.

Reference: X. Qin et al., "Highly Accurate Dichotomous Image Segmentation", ECCV 2022.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from isnet.core import IsnetError


def upsample_like(src: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Bilinearly resize ``src`` to the spatial size of ``target`` (the official ``_upsample_like``)."""
    return F.interpolate(src, size=target.shape[2:], mode="bilinear", align_corners=False)


class REBNCONV(nn.Module):
    """3x3 conv (padding = dilation) -> BatchNorm -> ReLU, with the official key names."""

    def __init__(self, in_ch: int, out_ch: int, dilation: int = 1):
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation)
        self.bn_s1 = nn.BatchNorm2d(out_ch)
        self.relu_s1 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu_s1(self.bn_s1(self.conv_s1(x)))


class RSU(nn.Module):
    """Residual U-block of height ``height`` (RSU-7 ... RSU-4), or RSU-4F when ``dilated``.

    Regular blocks pool (2x2, ceil_mode) between encoder levels 1 .. L-2 and use dilation 2 only
    at the bottom level; the dilated variant never pools and doubles the dilation at every level
    instead (1, 2, 4, 8). Each decoder level concatenates the deeper decoder output with the
    same-level encoder output, upsampling first wherever the encoder pooled.
    """

    def __init__(self, height: int, in_ch: int, mid_ch: int, out_ch: int, dilated: bool = False):
        super().__init__()
        self.height = height
        self.dilated = dilated
        dilations = [2 ** i for i in range(height)] if dilated else [1] * (height - 1) + [2]
        self.pooled = [not dilated and level <= height - 2 for level in range(1, height + 1)]

        self.rebnconvin = REBNCONV(in_ch, out_ch)
        for level in range(1, height + 1):
            block_in = out_ch if level == 1 else mid_ch
            setattr(self, f"rebnconv{level}", REBNCONV(block_in, mid_ch, dilations[level - 1]))
        for level in range(height - 1, 0, -1):
            block_out = out_ch if level == 1 else mid_ch
            setattr(self, f"rebnconv{level}d", REBNCONV(2 * mid_ch, block_out, dilations[level - 1]))
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hxin = self.rebnconvin(x)
        encoded = []
        hx = hxin
        for level in range(1, self.height + 1):
            hx = getattr(self, f"rebnconv{level}")(hx)
            encoded.append(hx)
            if self.pooled[level - 1]:
                hx = self.pool(hx)
        hx = encoded[-1]
        for level in range(self.height - 1, 0, -1):
            skip = encoded[level - 1]
            if self.pooled[level - 1]:
                hx = upsample_like(hx, skip)
            hx = getattr(self, f"rebnconv{level}d")(torch.cat((hx, skip), 1))
        return hx + hxin


@dataclass(frozen=True)
class StageSpec:
    """One RSU stage: its height, whether it is the dilated 4F variant, and mid/out channels."""

    height: int
    dilated: bool
    mid: int
    out: int


@dataclass(frozen=True)
class IsnetArch:
    """Channel plan of an ISNet: the stem width, six encoder stages and five decoder stages.

    Decoder stages are listed deepest first (``stage5d`` ... ``stage1d``). The topology is
    fixed; only the widths vary, so a lighter ISNet keeps every layer of the official one.
    """

    name: str
    stem: int
    encoder: tuple[StageSpec, ...]
    decoder: tuple[StageSpec, ...]
    gt_stem: int
    gt_encoder: tuple[StageSpec, ...]

    def to_dict(self) -> dict:
        """A JSON-serialisable description, stored in checkpoints and ``build.json``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "IsnetArch":
        """Rebuild an architecture stored by :meth:`to_dict`."""
        try:
            return cls(
                name=str(data["name"]),
                stem=int(data["stem"]),
                encoder=tuple(StageSpec(**s) for s in data["encoder"]),
                decoder=tuple(StageSpec(**s) for s in data["decoder"]),
                gt_stem=int(data["gt_stem"]),
                gt_encoder=tuple(StageSpec(**s) for s in data["gt_encoder"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IsnetError(f"invalid architecture description in checkpoint: {exc}") from None


def _stages(*rows: tuple[int | str, int, int]) -> tuple[StageSpec, ...]:
    return tuple(StageSpec(4 if h == "4F" else int(h), h == "4F", mid, out) for h, mid, out in rows)


# The official ISNetDIS channel plan (the DIS authors' isnet.py) and its GT encoder.
_OFFICIAL = IsnetArch(
    name="isnet",
    stem=64,
    encoder=_stages((7, 32, 64), (6, 32, 128), (5, 64, 256), (4, 128, 512), ("4F", 256, 512), ("4F", 256, 512)),
    decoder=_stages(("4F", 256, 512), (4, 128, 256), (5, 64, 128), (6, 32, 64), (7, 16, 64)),
    gt_stem=16,
    gt_encoder=_stages((7, 16, 64), (6, 16, 64), (5, 32, 128), (4, 32, 256), ("4F", 64, 512), ("4F", 64, 512)),
)

# Same topology with the U^2-Net-small plan (mid 16, out 64 everywhere): ~1 M parameters,
# trainable on a CPU. Its GT encoder emits 64 channels at every stage to match the decoder.
_LITE = IsnetArch(
    name="isnet-lite",
    stem=64,
    encoder=_stages((7, 16, 64), (6, 16, 64), (5, 16, 64), (4, 16, 64), ("4F", 16, 64), ("4F", 16, 64)),
    decoder=_stages(("4F", 16, 64), (4, 16, 64), (5, 16, 64), (6, 16, 64), (7, 16, 64)),
    gt_stem=16,
    gt_encoder=_stages((7, 16, 64), (6, 16, 64), (5, 16, 64), (4, 16, 64), ("4F", 16, 64), ("4F", 16, 64)),
)

ARCHS: dict[str, IsnetArch] = {a.name: a for a in (_OFFICIAL, _LITE)}


def _rsu(spec: StageSpec, in_ch: int) -> RSU:
    return RSU(spec.height, in_ch, spec.mid, spec.out, spec.dilated)


class ISNet(nn.Module):
    """ISNetDIS: conv stem, six RSU encoder stages, five RSU decoder stages, six side heads.

    ``deploy=False`` (training) returns ``([sigmoid(d1) ... sigmoid(d6)], [stage1d ... stage5d,
    stage6])`` as the official model does. ``deploy=True`` returns only ``sigmoid(d1)`` at the
    input resolution; side heads 2-6 and their upsampling are never run, so they are absent
    from an exported graph.
    """

    def __init__(self, arch: IsnetArch | str = "isnet", deploy: bool = False):
        super().__init__()
        self.arch = ARCHS[arch] if isinstance(arch, str) else arch
        self.deploy = deploy
        self.frozen_batch_norm = False
        a = self.arch
        # Official quirk: `conv_in` is a plain strided conv (no BN/ReLU) and the module's
        # `pool_in` is defined but never used, so stage 1 runs at half resolution.
        self.conv_in = nn.Conv2d(3, a.stem, 3, stride=2, padding=1)
        self.pool_in = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        in_ch = a.stem
        for i, spec in enumerate(a.encoder, start=1):
            setattr(self, f"stage{i}", _rsu(spec, in_ch))
            if i < len(a.encoder):
                setattr(self, f"pool{i}{i + 1}", nn.MaxPool2d(2, stride=2, ceil_mode=True))
            in_ch = spec.out
        deeper = a.encoder[-1].out
        for level, spec in zip(range(5, 0, -1), a.decoder):
            setattr(self, f"stage{level}d", _rsu(spec, deeper + a.encoder[level - 1].out))
            deeper = spec.out
        side_in = [a.decoder[4 - i].out for i in range(5)] + [a.encoder[-1].out]
        for i, ch in enumerate(side_in, start=1):
            setattr(self, f"side{i}", nn.Conv2d(ch, 1, 3, padding=1))

    def freeze_batch_norm(self) -> None:
        """Keep every BatchNorm on its running statistics in training mode too (its scale and shift still
        learn): fine-tuning weights whose BatchNorm an exporter folded into the convolutions, where
        batch statistics would change what the loaded network computes."""
        self.frozen_batch_norm = True
        self.train(self.training)

    def train(self, mode: bool = True) -> "ISNet":
        super().train(mode)
        if self.frozen_batch_norm:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    def side_logits(self, x: torch.Tensor, heads: int = 6) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Run the network; return the first ``heads`` side logits (at input size) and the decoder features."""
        hx = self.conv_in(x)
        encoded = []
        for i in range(1, 7):
            hx = getattr(self, f"stage{i}")(hx)
            encoded.append(hx)
            if i < 6:
                hx = getattr(self, f"pool{i}{i + 1}")(hx)
        decoded = {6: encoded[5]}
        hx = encoded[5]
        for level in range(5, 0, -1):
            skip = encoded[level - 1]
            hx = getattr(self, f"stage{level}d")(torch.cat((upsample_like(hx, skip), skip), 1))
            decoded[level] = hx
        logits = [upsample_like(getattr(self, f"side{i}")(decoded[i]), x) for i in range(1, heads + 1)]
        return logits, [decoded[i] for i in range(1, 7)]

    def forward(self, x: torch.Tensor):
        if self.deploy:
            logits, _ = self.side_logits(x, heads=1)
            return torch.sigmoid(logits[0])
        logits, features = self.side_logits(x)
        return [torch.sigmoid(d) for d in logits], features


class _ConvBnRelu(nn.Module):
    """The GT encoder's stem (official ``myrebnconv``): conv -> BN -> ReLU with keys conv/bn."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1)
        self.bn = nn.BatchNorm2d(out_ch)
        self.rl = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rl(self.bn(self.conv(x)))


class ISNetGTEncoder(nn.Module):
    """The GT encoder used for intermediate supervision: mask in, six side maps and features out.

    Its stage features have the channel counts and resolutions of ISNet's decoder features
    ``[stage1d ... stage5d, stage6]``, which is what the feature-synchronisation loss compares.
    """

    def __init__(self, arch: IsnetArch | str = "isnet"):
        super().__init__()
        self.arch = ARCHS[arch] if isinstance(arch, str) else arch
        a = self.arch
        self.conv_in = _ConvBnRelu(1, a.gt_stem, stride=2)
        in_ch = a.gt_stem
        for i, spec in enumerate(a.gt_encoder, start=1):
            setattr(self, f"stage{i}", _rsu(spec, in_ch))
            if i < len(a.gt_encoder):
                setattr(self, f"pool{i}{i + 1}", nn.MaxPool2d(2, stride=2, ceil_mode=True))
            setattr(self, f"side{i}", nn.Conv2d(spec.out, 1, 3, padding=1))
            in_ch = spec.out

    def side_logits(self, mask: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Return the six side logits (at input size) and the six stage features."""
        hx = self.conv_in(mask)
        features = []
        for i in range(1, 7):
            hx = getattr(self, f"stage{i}")(hx)
            features.append(hx)
            if i < 6:
                hx = getattr(self, f"pool{i}{i + 1}")(hx)
        logits = [upsample_like(getattr(self, f"side{i}")(f), mask) for i, f in enumerate(features, start=1)]
        return logits, features

    def forward(self, mask: torch.Tensor):
        logits, features = self.side_logits(mask)
        return [torch.sigmoid(d) for d in logits], features


def count_macs(model: nn.Module, height: int, width: int) -> int:
    """Multiply-accumulates of all convolutions for one ``3 x height x width`` forward pass.

    A forward hook per conv is all this needs; a profiler package would add a dependency for
    the same ten lines (bilinear upsampling and pooling are not counted, as is customary).
    """
    total = 0

    def hook(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        total += output.numel() * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, height, width))
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return total
