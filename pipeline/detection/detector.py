"""Object detectors for the first stage: loading one offline, mapping its classes, filtering its boxes.

Two kinds of model, one interface (:class:`LoadedDetector`):

- torchvision's COCO detectors by name (``fasterrcnn_resnet50_fpn``, ``retinanet_resnet50_fpn_v2``,
  ``fcos_resnet50_fpn``, ``ssdlite320_mobilenet_v3_large``, ...; ``torchvision.models.list_models
  (module=torchvision.models.detection)``), built without weights and loaded from ``weights``
  (a state dict ``.pth`` or ``.safetensors``) or else from torch's hub cache, under the file
  name torchvision's default weights would be downloaded to. Nothing is downloaded here.
  Their labels are COCO category ids (COCO-91), mapped with the label space's own map.
- ``tiny-fcos`` (:mod:`pipeline.tiny_fcos.model`), a checkpoint folder whose config names its
  categories; they map to the label space's objects by name.

Every model is called the torchvision way: ``model(list of float [3, H, W] in 0..1)`` ->
one ``{"boxes": [k, 4] xyxy in input pixels, "scores": [k], "labels": [k]}`` per image.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hoicore.errors import HoiError
from hoidata import boxes as B
from hoidata.labelspace import LabelSpace

log = logging.getLogger(__name__)

TINY_FCOS = "tiny-fcos"
# Where the model keeps its own post-processing settings: (object path, attribute names).
_OWN_SETTINGS = (("roi_heads", ("score_thresh", "nms_thresh", "detections_per_img")),
                 ("rpn", ("_pre_nms_top_n", "_post_nms_top_n", "nms_thresh", "score_thresh")),
                 ("", ("score_thresh", "nms_thresh", "detections_per_img", "topk_candidates")),
                 ("transform", ("min_size", "max_size", "fixed_size", "size_divisible")))


class DetectorError(HoiError, ValueError):
    """A detector that cannot be loaded as asked; the message names the model or file and the fix."""


@dataclass
class LoadedDetector:
    """A detector ready to run, and what identifies it."""

    model: torch.nn.Module          # eval mode, on the CPU
    name: str                       # torchvision model name, or "tiny-fcos"
    weights: Path                   # the weights file
    weights_sha256: str             # sha256 of that file's bytes
    label_to_object: np.ndarray     # int64 [L]: object index of each model label, -1 for none
    category_ids: str               # what the model's labels are: "coco91" or "categories" (config names)
    config: dict = field(default_factory=dict)  # tiny-fcos: its config

    @property
    def own_settings(self) -> dict:
        """The model's own thresholds and input sizes (what it does before our filters)."""
        return model_settings(self.model)

    @property
    def input_side(self) -> int | None:
        """The longest side of the input the model resizes every image to (its transform's
        ``max_size``, or the larger ``fixed_size``); None when it does not say. Decoding an
        image to this long side changes nothing it computes on: it resizes to at most that."""
        transform = getattr(self.model, "transform", None)
        fixed = getattr(transform, "fixed_size", None)
        if fixed:
            return int(max(fixed))
        side = getattr(transform, "max_size", None)
        return int(side) if side else None


def available_models() -> list[str]:
    """Detector names :func:`load_detector` knows: torchvision's detection models and tiny-fcos."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models.detection)) + [TINY_FCOS]


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hub_weights_path(name: str) -> Path:
    """Where torch's hub cache keeps torchvision's default weights of model ``name``."""
    import torchvision

    url = torchvision.models.get_model_weights(name).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def model_settings(model: torch.nn.Module) -> dict:
    """The post-processing thresholds and input sizes a torchvision detector holds, by name
    (``roi_heads.score_thresh``, ``transform.min_size``, ...); JSON-ready."""
    out = {}
    for where, names in _OWN_SETTINGS:
        obj = getattr(model, where, None) if where else model
        for name in names:
            value = getattr(obj, name, None) if obj is not None else None
            if value is None or callable(value):
                continue
            key = f"{where}.{name.lstrip('_')}" if where else name
            out[key] = list(value) if isinstance(value, tuple) else dict(value) if isinstance(value, dict) else value
    return out


def _read_state_dict(path: Path) -> dict:
    """A state dict from ``.safetensors`` or a torch file (a plain state dict, or a training
    checkpoint ``{"model": state_dict, ...}`` as torchvision's reference scripts save)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise DetectorError(f"{path}: not a readable safetensors file ({e})") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types (pickle, zip, runtime errors) for a bad file
        raise DetectorError(f"{path}: not a readable torch weights file ({type(e).__name__}: {e})") from e
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DetectorError(f"{path}: not a state dict (name -> tensor); save one with torch.save(model.state_dict())")
    return state


def _torchvision_model(name: str, weights: str | Path | None) -> tuple[torch.nn.Module, Path]:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models.detection)
    if name not in known:
        raise DetectorError(f"unknown detector {name!r}; choose one of {', '.join(available_models())}")
    if weights is None:
        path = hub_weights_path(name)
        if not path.is_file():
            raise DetectorError(f"no weights for {name}: expected torchvision's file at {path}; nothing is "
                                "downloaded here, so put the file there or pass --detector-weights FILE")
    else:
        path = Path(weights)
        if not path.is_file():
            raise DetectorError(f"{path}: no such weights file")
    # weights=None and weights_backbone=None: the architecture alone, never a download.
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None)
    try:
        model.load_state_dict(_read_state_dict(path))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1:2] or [str(e)]
        raise DetectorError(f"{path}: not weights of {name} ({first[0].strip()[:160]})") from e
    return model, path


def _categories_to_objects(categories, labelspace: LabelSpace, source: str) -> np.ndarray:
    """int64 [L]: label space object index of each category name, -1 where it has none."""
    lut = np.array([labelspace.objects.index(c) if c in labelspace.objects else -1 for c in categories], np.int64)
    if not (lut >= 0).any():
        raise DetectorError(f"{source}: none of its categories ({', '.join(categories[:5])}, ...) is an object "
                            f"of label space {labelspace.name!r}; pass the label space it was trained for")
    missing = [c for c, o in zip(categories, lut) if o < 0]
    if missing:
        log.warning("%s: categories without an object in %r are dropped: %s", source, labelspace.name,
                    ", ".join(missing))
    return lut


def load_detector(name: str, weights: str | Path | None, labelspace: LabelSpace) -> LoadedDetector:
    """Load detector ``name`` with ``weights`` (file, or tiny-fcos folder) for ``labelspace``."""
    if name == TINY_FCOS:
        from pipeline.tiny_fcos.model import TinyFcosError, load_tiny_fcos

        if weights is None:
            raise DetectorError(f"{TINY_FCOS} needs --detector-weights: its checkpoint folder (config and safetensors)")
        try:
            model, cfg, path = load_tiny_fcos(weights)
        except TinyFcosError as e:
            raise DetectorError(str(e)) from e
        lut = _categories_to_objects(list(cfg.categories), labelspace, str(weights))
        return LoadedDetector(model, name, path, sha256_file(path), lut, "categories", cfg.to_dict())
    model, path = _torchvision_model(name, weights)
    if not labelspace.coco91_to_object:
        raise DetectorError(f"label space {labelspace.name!r} has no COCO map (coco91_to_object); a COCO "
                            f"detector's classes cannot be mapped to its objects")
    num_labels = 91  # COCO category ids 0..90 (0: background, never output)
    lut = labelspace.object_from_coco(np.arange(num_labels), "coco91")
    return LoadedDetector(model.eval(), name, path, sha256_file(path), lut, "coco91")


def filter_image(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, label_to_object: np.ndarray,
                 size: tuple[int, int], score_threshold: float, nms_iou: float, max_per_image: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's model output as stored: labels mapped to objects (unmapped dropped), scores
    >= ``score_threshold``, boxes clipped to the image (``size`` = (w, h)) and zero-area ones
    dropped, class-wise NMS at ``nms_iou`` (>= 1: none), the ``max_per_image`` best, by
    descending score.

    In: boxes float [k, 4] xyxy (coord), scores float [k], labels int [k] (model labels).
    Out: boxes float32 [m, 4], scores float32 [m], labels int64 [m] (object indices).
    """
    from torchvision.ops import batched_nms

    b = boxes.detach().float().cpu().numpy().astype(np.float64).reshape(-1, 4)
    s = scores.detach().float().cpu().numpy().astype(np.float32).reshape(-1)
    raw = labels.detach().cpu().numpy().astype(np.int64).reshape(-1)
    known = (raw >= 0) & (raw < len(label_to_object))
    obj = np.where(known, label_to_object[np.clip(raw, 0, len(label_to_object) - 1)], -1)
    # Clipped and cast before the area test and NMS: both judge the boxes that are stored.
    b = B.clip_coord(b, *size).astype(np.float32)
    keep = np.flatnonzero((obj >= 0) & (s >= score_threshold) & (B.area_coord(b) > 0))
    b, s, obj = b[keep], s[keep], obj[keep]
    if nms_iou < 1 and len(s):
        kept = batched_nms(torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(obj), nms_iou).numpy()
        b, s, obj = b[kept], s[kept], obj[kept]
    order = np.argsort(-s, kind="stable")[:max_per_image]
    return b[order], s[order], obj[order]
