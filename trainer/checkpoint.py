"""Checkpoints: a folder with safetensors weights and a JSON that says what made them.

::

    checkpoint/
      model.safetensors      the student's weights
      optimizer.safetensors  AdamW moments (for --resume)
      checkpoint.json        format, package version, epoch, step, the full config, the
                             training cache's path, fingerprint and identity attributes,
                             the optimizer's hyper-parameters, the epoch's metrics

No pickle anywhere, so loading a checkpoint cannot run code. A folder is written beside
the old one and swapped in, so a run killed while saving keeps its previous checkpoint.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cache import schema as S
from cache.store import TeacherCache
from hoidata import __version__

FORMAT = "hoi-student/1"
MODEL_FILE, OPTIMIZER_FILE, META_FILE = "model.safetensors", "optimizer.safetensors", "checkpoint.json"


class CheckpointError(ValueError):
    """A missing or malformed checkpoint, or one that does not belong with the cache given."""


def cache_identity(cache: TeacherCache) -> dict:
    """What a checkpoint records of its training cache."""
    return {"path": str(cache.path), "fingerprint": cache.fingerprint,
            **{k: cache.attrs[k] for k in (*S.IDENTITY_ATTRS, "layout")}}


def save_checkpoint(directory, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, config: dict,
                    cache: TeacherCache, epoch: int, step: int, metrics: dict) -> Path:
    """Write the checkpoint folder ``directory`` (replacing an old one only once complete)."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp / MODEL_FILE))
    opt = optimizer.state_dict()
    moments = {f"{i}.{name}": t.detach().contiguous().cpu() for i, st in opt["state"].items() for name, t in st.items()}
    save_file(moments, str(tmp / OPTIMIZER_FILE))
    meta = {"format": FORMAT, "package_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "epoch": epoch, "step": step, "config": config, "cache": cache_identity(cache),
            "optimizer": {"param_groups": opt["param_groups"]}, "metrics": metrics}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    if old.exists():
        shutil.rmtree(old)
    return directory


def read_meta(directory) -> dict:
    """The checkpoint's JSON, checked for format."""
    directory = Path(directory)
    path = directory / META_FILE
    if not path.is_file():
        old = directory.with_name(directory.name + ".old")
        if (old / META_FILE).is_file():  # killed between the two renames of save_checkpoint
            raise CheckpointError(f"{directory}: a save was interrupted; the previous checkpoint is intact in "
                                  f"{old}: rename it to {directory.name} and resume")
        raise CheckpointError(f"{directory}: no checkpoint here ({META_FILE} is missing); give the checkpoint "
                              "folder that `hoi train` wrote (RUN/checkpoint)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r}, this version reads {FORMAT!r}")
    if "adapters" not in meta.get("config", {}):
        raise CheckpointError(f"{path}: made by hoi-distill {meta.get('package_version')}, whose student had one "
                              "adapter named otherwise; retrain it (--adapters shared is that student)")
    return meta


def _load(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise CheckpointError(f"{path}: unreadable ({e}); the checkpoint is damaged: retrain, or resume from a "
                              "copy") from e


def load_weights(directory) -> dict[str, torch.Tensor]:
    return _load(Path(directory) / MODEL_FILE)


def load_optimizer_state(directory, meta: dict) -> dict:
    """An AdamW ``state_dict`` rebuilt from the safetensors moments and the JSON hyper-parameters."""
    state: dict[int, dict] = {}
    for key, t in _load(Path(directory) / OPTIMIZER_FILE).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = t
    return {"state": state, "param_groups": meta["optimizer"]["param_groups"]}


def check_same_cache(meta: dict, cache: TeacherCache, directory) -> None:
    """Refuse to resume on a cache other than the one the checkpoint was trained on, naming
    the first field that differs."""
    stored = meta["cache"]
    if stored["fingerprint"] == cache.fingerprint:
        return
    here = json.loads(json.dumps(cache_identity(cache)))
    ident = {k: stored[k] for k in (*S.IDENTITY_ATTRS, "layout")}
    diff = S.first_difference(ident, {k: here[k] for k in ident}) or "fingerprint"
    raise CheckpointError(
        f"{directory} was trained on {stored['path']}, not on {cache.path}: {diff} is "
        f"{_short(S.lookup(ident, diff))} there but {_short(S.lookup(here, diff))} here. A run continues on "
        "its own cache only; start a new run (another --out) to train on this one")


def check_teacher(meta: dict, cache: TeacherCache, directory) -> None:
    """Refuse to apply a student to a cache made by another teacher (other CLIP, weights or
    prompts: its text embeddings and dense maps would mean something else)."""
    stored = meta["cache"]["teacher"]
    here = json.loads(json.dumps(cache.attrs["teacher"]))
    diff = S.teacher_difference(stored, here)
    if diff:
        raise CheckpointError(
            f"{directory} was trained with another teacher than {cache.path}'s: {diff} is "
            f"{_short(S.lookup({'teacher': stored}, diff))} in the checkpoint but "
            f"{_short(S.lookup({'teacher': here}, diff))} in the cache. Use a cache made by the same teacher "
            "(model, weights, prompts)")


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."
