"""``tiny-fcos``: a small detector of our own, torchvision's FCOS head over a small CNN.

A COCO detector is the paper's first stage, but on a small world (the bundled minibench:
224 x 224 images, a dozen objects) a ResNet-50 detector is far too slow to train on a
laptop's CPU. This is the same anchor-free FCOS head (torchvision's, with its losses and
post-processing) over a backbone sized for such images: five conv stages (strides 2 to
32) and a tiny FPN over the last three (strides 8, 16, 32).

A trained model is a folder, like open_clip's ``local-dir:`` models::

    FOLDER/detector_config.json    {"arch": "tiny-fcos", "categories": [...], sizes, channels, ...}
    FOLDER/detector.safetensors    the state dict

``categories`` are object names; the detector's label ``k`` is ``categories[k]``, mapped
to a label space's objects by name, so a checkpoint does not depend on any label space's
object order.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from hoicore.errors import HoiError

ARCH = "tiny-fcos"
CONFIG_NAME = "detector_config.json"
WEIGHTS_NAME = "detector.safetensors"


class TinyFcosError(HoiError, ValueError):
    """A tiny-fcos config or checkpoint that cannot be used; the message names the file."""


@dataclass(frozen=True)
class TinyFcosConfig:
    """Everything that defines a tiny-fcos model besides its weights."""

    categories: tuple[str, ...]                           # object name of each label, label k = categories[k]
    channels: tuple[int, ...] = (16, 32, 64, 96, 128)     # backbone stages, strides 2, 4, 8, 16, 32
    fpn_channels: int = 64                                # a multiple of 32 (the head's GroupNorm(32))
    head_convs: int = 2                                   # convs per head branch (torchvision's default: 4)
    min_size: int = 224                                   # images are resized to this short side ...
    max_size: int = 224                                   # ... and at most this long side
    image_mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    image_std: tuple[float, ...] = (0.229, 0.224, 0.225)
    score_thresh: float = 0.05                            # the model's own post-processing
    nms_thresh: float = 0.6
    detections_per_img: int = 100
    topk_candidates: int = 1000

    def to_dict(self) -> dict:
        return {"arch": ARCH, **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}}

    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>") -> "TinyFcosConfig":
        if not isinstance(d, dict) or d.get("arch") != ARCH:
            arch = d.get("arch") if isinstance(d, dict) else None
            raise TinyFcosError(f"{source}: not a {ARCH} config ('arch' is {arch!r})")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"arch"})
        if unknown:
            raise TinyFcosError(f"{source}: unknown key(s) {', '.join(unknown)} in a {ARCH} config")
        try:
            cfg = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})
        except TypeError as e:
            raise TinyFcosError(f"{source}: {e}") from e
        cfg.check(source)
        return cfg

    def check(self, source: str = "config") -> None:
        if not self.categories or not all(isinstance(c, str) for c in self.categories):
            raise TinyFcosError(f"{source}: 'categories' must be a non-empty list of object names")
        if len(self.channels) < 3:
            raise TinyFcosError(f"{source}: 'channels' needs at least 3 stages (the FPN uses the last three)")
        if self.fpn_channels % 32:
            raise TinyFcosError(f"{source}: 'fpn_channels' must be a multiple of 32 (the head's GroupNorm)")


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyBackbone(nn.Module):
    """Conv stages (each halves the resolution) and a top-down FPN over the last three.

    Input float32 [B, 3, H, W] (normalised); output OrderedDict ``p3, p4, p5`` of float32
    [B, fpn_channels, H / s, W / s] for strides s = 2 ** (n - 2), 2 ** (n - 1), 2 ** n with
    n stages (8, 16, 32 for the default five). ``out_channels`` is what torchvision's
    detection heads read.
    """

    def __init__(self, channels=(16, 32, 64, 96, 128), fpn_channels: int = 64):
        super().__init__()
        stages, cin = [], 3
        for k, c in enumerate(channels):
            # The first stage is one conv: at full resolution a second one costs most of the net.
            block = [_conv_bn(cin, c, 2)] + ([_conv_bn(c, c, 1)] if k else [])
            stages.append(nn.Sequential(*block))
            cin = c
        self.stages = nn.ModuleList(stages)
        self.lateral = nn.ModuleList(nn.Conv2d(c, fpn_channels, 1) for c in channels[-3:])
        self.smooth = nn.ModuleList(nn.Conv2d(fpn_channels, fpn_channels, 3, padding=1) for _ in range(3))
        self.out_channels = fpn_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        laterals = [conv(f) for conv, f in zip(self.lateral, feats[-3:])]
        top = laterals[-1]
        merged = [top]
        for lat in reversed(laterals[:-1]):  # coarse to fine: add the upsampled coarser level
            top = lat + nn.functional.interpolate(top, size=lat.shape[-2:], mode="nearest")
            merged.insert(0, top)
        return OrderedDict((f"p{k + 3}", conv(m)) for k, (conv, m) in enumerate(zip(self.smooth, merged)))


def build_tiny_fcos(cfg: TinyFcosConfig) -> nn.Module:
    """A randomly initialised tiny-fcos (torchvision ``FCOS``) of ``cfg``, in train mode."""
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.fcos import FCOSHead

    cfg.check()
    backbone = TinyBackbone(cfg.channels, cfg.fpn_channels)
    n = len(cfg.channels)
    # FCOS's "anchors" are points; their size (= the level's stride) scales the regression
    # targets and sets which level learns which box sizes.
    strides = tuple((2 ** s,) for s in range(n - 2, n + 1))
    anchors = AnchorGenerator(sizes=strides, aspect_ratios=((1.0,),) * 3)
    head = FCOSHead(cfg.fpn_channels, 1, len(cfg.categories), num_convs=cfg.head_convs)
    return FCOS(backbone, num_classes=len(cfg.categories), min_size=cfg.min_size, max_size=cfg.max_size,
                image_mean=list(cfg.image_mean), image_std=list(cfg.image_std), anchor_generator=anchors,
                head=head, score_thresh=cfg.score_thresh, nms_thresh=cfg.nms_thresh,
                detections_per_img=cfg.detections_per_img, topk_candidates=cfg.topk_candidates)


def save_tiny_fcos(model: nn.Module, cfg: TinyFcosConfig, folder: str | Path, extra: dict | None = None) -> Path:
    """Write ``folder/detector_config.json`` and ``folder/detector.safetensors`` (each atomically);
    ``extra`` (training settings, results) goes to ``folder/training.json``. Returns the folder."""
    from safetensors.torch import save_file

    from hoicore.files import atomic_write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_write(folder / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"arch": ARCH})
    with atomic_write(folder / CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
    if extra is not None:
        with atomic_write(folder / "training.json") as tmp:
            tmp.write_text(json.dumps(extra, indent=1) + "\n")
    return folder


def tiny_fcos_files(path: str | Path) -> tuple[Path, Path]:
    """(config, weights) of a tiny-fcos checkpoint given as its folder or its weights file
    (the config then lies beside it)."""
    path = Path(path)
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    config = weights.parent / CONFIG_NAME
    if not weights.is_file():
        raise TinyFcosError(f"{path}: no {ARCH} weights ({WEIGHTS_NAME} in a folder, or a .safetensors file)")
    if not config.is_file():
        raise TinyFcosError(f"{weights}: no {CONFIG_NAME} beside it; a {ARCH} checkpoint is a folder with both")
    return config, weights


def load_tiny_fcos(path: str | Path) -> tuple[nn.Module, TinyFcosConfig, Path]:
    """(model in eval mode on the CPU, its config, the weights file) of a checkpoint folder or file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config, weights = tiny_fcos_files(path)
    try:
        d = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TinyFcosError(f"{config}: not valid JSON ({e})") from e
    cfg = TinyFcosConfig.from_dict(d, str(config))
    model = build_tiny_fcos(cfg)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise TinyFcosError(f"{weights}: not a readable safetensors file ({e})") from e
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1:2] or [str(e)]
        raise TinyFcosError(f"{weights}: does not fit the config beside it ({first[0].strip()[:160]})") from e
    return model.eval(), cfg, weights
