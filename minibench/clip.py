"""The minibench CLIP: an open_clip ViT registered from ``minibench/model/minibench-vit.json``.

Loading the shipped checkpoint needs nothing but open_clip (offline)::

    import open_clip
    open_clip.add_model_config("minibench/model/minibench-vit.json")   # name = file stem
    model, _, preprocess = open_clip.create_model_and_transforms(
        "minibench-vit", pretrained="minibench/model/open_clip_model.safetensors")
    tokenizer = open_clip.get_tokenizer("minibench-vit")               # after registering: 20 tokens

or, with no registration, ``open_clip.create_model_and_transforms("local-dir:minibench/model")``
(the folder also holds ``open_clip_config.json``). :func:`load` does the first.

The model sees 128 px inputs (patch 16: an 8x8 token map, as CLIP ViT-B/16 sees 224 px
as 14x14). ``force_image_size`` gives a larger input for a finer dense map; open_clip
interpolates the positional embedding on load.
Preprocessing is open_clip's default for a checkpoint given by path (OpenAI mean/std,
bicubic resize); :func:`to_input` applies the same mean/std to uint8 arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import torch

from hoicore.errors import InputError

from .labels import HOI, PROMPTS

MODEL_NAME = "minibench-vit"
MODEL_DIR = Path(__file__).resolve().parent / "model"
CONFIG = MODEL_DIR / f"{MODEL_NAME}.json"
WEIGHTS = MODEL_DIR / "open_clip_model.safetensors"


def register() -> str:
    """Register the model config with open_clip (idempotent); returns the model name."""
    if MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(CONFIG)
    return MODEL_NAME


def tokenizer():
    """open_clip's tokenizer for the model (20-token context: only right after registering)."""
    register()
    tok = open_clip.get_tokenizer(MODEL_NAME)
    assert tok.context_length == open_clip.get_model_config(MODEL_NAME)["text_cfg"]["context_length"]
    return tok


def tokenize(captions, tok=None) -> torch.Tensor:
    """int64 [n, context]: token ids; raises if a caption would be truncated (open_clip's
    tokenizer truncates silently)."""
    tok = tok or tokenizer()
    for c in captions:
        n = len(tok.encode(c)) + 2  # + start and end of text
        if n > tok.context_length:
            raise InputError(f"caption {c!r} needs {n} tokens; the context holds {tok.context_length}")
    return tok(list(captions))


def load(weights: str | Path = WEIGHTS, image_size: int | None = None):
    """(model in eval mode, preprocess, tokenizer) from a checkpoint file, offline."""
    register()
    model, _, preprocess = open_clip.create_model_and_transforms(
        MODEL_NAME, pretrained=str(weights), force_image_size=image_size)
    return model.eval(), preprocess, tokenizer()


def to_input(images: np.ndarray, model) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W], normalised as the model's preprocessing does."""
    cfg = open_clip.get_model_preprocess_cfg(model)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def encode_images(model, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    """float32 [N, D] unit image embeddings of uint8 [N, H, W, 3] images, resized (bilinear,
    antialiased) to the model's input size when they differ."""
    model.eval()
    size = open_clip.get_model_preprocess_cfg(model)["size"]
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    out = []
    for i in range(0, len(images), batch):
        x = to_input(images[i:i + batch], model)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = torch.nn.functional.interpolate(x, (size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(model.encode_image(x, normalize=True).float())
    return torch.cat(out)


@torch.no_grad()
def class_scores(model, images: np.ndarray) -> np.ndarray:
    """float32 [N, C]: cosine of each image with each class prompt."""
    text = model.encode_text(tokenize(PROMPTS), normalize=True).float()
    return (encode_images(model, images) @ text.T).numpy()


def rank_accuracy(model, images: np.ndarray, hoi: np.ndarray) -> dict:
    """How often the right prompt ranks first, for crops uint8 [N, H, W, 3] of classes hoi [N].

    ``top1``: among all classes; ``top1_given_object``: among the classes of the crop's
    object (the teacher's job when the detector names the object); chance levels too.
    """
    sim = class_scores(model, images)
    obj = np.array([o for _, o in HOI])
    same = obj[None, :] == obj[hoi][:, None]                     # [N, C]
    n_of_obj = same.sum(1)
    return {"n": int(len(hoi)),
            "top1": float(np.mean(sim.argmax(1) == hoi)),
            "top1_given_object": float(np.mean(np.where(same, sim, -np.inf).argmax(1) == hoi)),
            "chance": 1.0 / len(PROMPTS), "chance_given_object": float(np.mean(1.0 / n_of_obj))}


def average_precision(score: np.ndarray, positive: np.ndarray) -> float:
    """Non-interpolated AP of ``score`` [N] against bool ``positive`` [N] (ties in given order)."""
    order = np.argsort(-score, kind="stable")
    hits = positive[order]
    if not hits.any():
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def scene_accuracy(model, scenes: np.ndarray, present: np.ndarray) -> dict:
    """Image-level recognition of whole scenes uint8 [N, H, W, 3] showing classes
    ``present`` bool [N, C]: class mAP (ranking the scenes for each class), how often the top
    class is one of the scene's, and the chance levels of both."""
    sim = class_scores(model, scenes)
    ap = [average_precision(sim[:, c], present[:, c]) for c in range(present.shape[1]) if present[:, c].any()]
    has = present.any(1)
    return {"n": int(len(scenes)), "class_map": float(np.mean(ap)),
            "top1_in_scene": float(np.mean(present[has, sim[has].argmax(1)])),
            "chance_class_map": float(np.mean(present[:, present.any(0)].mean(0))),
            "chance_top1_in_scene": float(np.mean(present[has].mean(1)))}


def scenes_by_input_size(weights, heldout: dict, sizes=(128, 160, 192, 224, 256)) -> dict:
    """{size: scene figures} of a checkpoint with its input resized to each size (open_clip
    interpolates the positional embedding): how to choose the teacher's ``--global-size``."""
    return {str(s): scene_accuracy(load(weights, image_size=s)[0], heldout["scenes"], heldout["present"])
            for s in sizes}


def heldout_accuracy(model, heldout: dict) -> dict:
    """Both figures on a held-out set (:func:`minibench.corpus.render_heldout`): whole scenes
    at the model's input size, and union boxes cut as the teacher cuts them."""
    return {"scenes": scene_accuracy(model, heldout["scenes"], heldout["present"]),
            "union_crops": rank_accuracy(model, heldout["unions"], heldout["union_hoi"])}
