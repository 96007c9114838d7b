"""Checkpoints: a folder with safetensors weights and a JSON that says what made them.

::

    checkpoint/
      model.safetensors      the student's weights
      optimizer.safetensors  AdamW moments (for --resume)
      checkpoint.json        format, package version, epoch, step, the full config, the
                             training cache's path, fingerprint and identity attributes,
                             the optimizer's hyper-parameters, the epoch's metrics, and
                             the sha256 of both weight files (checked on every load)

No pickle anywhere, so loading a checkpoint cannot run code. A folder is written beside
the old one and swapped in, so a run killed while saving keeps its previous checkpoint,
and the next run finishes the swap (:func:`save_checkpoint`, :func:`recover`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cache import schema as S
from cache.store import TeacherCache
from hoicore import __version__
from hoicore.errors import HoiError
from hoicore.files import atomic_write, fsync_dir, fsync_file, json_form

FORMAT = "hoi-student/1"
MODEL_FILE, OPTIMIZER_FILE, META_FILE = "model.safetensors", "optimizer.safetensors", "checkpoint.json"


class CheckpointError(HoiError, ValueError):
    """A missing or malformed checkpoint, or one that does not belong with the cache given."""


def cache_identity(cache: TeacherCache) -> dict:
    """What a checkpoint records of its training cache."""
    return {"path": str(cache.path), "fingerprint": cache.fingerprint,
            **{k: cache.attrs[k] for k in (*S.IDENTITY_ATTRS, "layout")}}


def save_checkpoint(directory, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, config: dict,
                    cache: TeacherCache, epoch: int, step: int, metrics: dict) -> Path:
    """Write the checkpoint folder ``directory`` (replacing an old one only once complete).

    The protocol, each step durable before the next (files and folders fsynced): finish any
    save a kill interrupted (:func:`recover`); write ``NAME.tmp`` (weights first, the JSON
    last and atomically, so a ``.tmp`` with its JSON is complete); rename the old folder to
    ``NAME.old``, ``NAME.tmp`` to ``NAME``, and delete ``NAME.old``. Every state a kill can
    leave is recognised by :func:`recover` and finished by the next run. A write that fails
    (a full disk) leaves the previous checkpoint as it was and says so."""
    directory = Path(directory)
    tmp = _sibling(directory, ".tmp")
    recover(directory)
    try:
        _remove(tmp)
        tmp.mkdir(parents=True)
        _write_files(tmp, model, optimizer, config, cache, epoch, step, metrics)
    except (OSError, SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        before = (f"the previous checkpoint in {directory} is intact" if (directory / META_FILE).exists()
                  else "no checkpoint was saved before")
        raise CheckpointError(f"cannot write the checkpoint of epoch {epoch} to {tmp} ({e}); {before}. Free disk "
                              "space and rerun with --resume (or without it when nothing was saved)") from e
    _commit(directory)
    return directory


def _sibling(directory: Path, suffix: str) -> Path:
    return directory.with_name(directory.name + suffix)


def _complete(folder: Path) -> bool:
    """A checkpoint folder whose JSON is there: written last, atomically, after the weights were synced."""
    return (folder / META_FILE).is_file()


def _remove(folder: Path) -> None:
    """Delete a folder, its JSON first: a deletion cut short never leaves a folder that looks complete."""
    if not folder.exists():
        return
    (folder / META_FILE).unlink(missing_ok=True)
    shutil.rmtree(folder)


def _commit(directory: Path) -> None:
    """Swap the complete ``NAME.tmp`` in as ``NAME`` (the old one kept as ``NAME.old`` until then)."""
    tmp, old = _sibling(directory, ".tmp"), _sibling(directory, ".old")
    if directory.exists():
        _remove(old)
        directory.rename(old)
        fsync_dir(directory.parent)
    tmp.rename(directory)
    fsync_dir(directory.parent)
    _remove(old)


def recover(directory) -> None:
    """Finish whatever a kill left of a save into ``directory``: a complete ``NAME.tmp`` newer than
    ``NAME`` (or with no ``NAME``) is committed; with neither, ``NAME.old`` comes back; what is left
    of an incomplete ``.tmp`` or a half-deleted ``.old`` goes. Call it holding the run's lock."""
    directory = Path(directory)
    tmp, old = _sibling(directory, ".tmp"), _sibling(directory, ".old")
    if _complete(tmp) and (not _complete(directory) or _epoch(tmp) > _epoch(directory)):
        if directory.exists() and not _complete(directory):
            _remove(directory)
        _commit(directory)
    elif not directory.exists() and _complete(old):
        old.rename(directory)  # killed between the two renames, before the new folder was complete
        fsync_dir(directory.parent)
    _remove(tmp)
    _remove(old)


def _epoch(folder: Path) -> int:
    try:
        return int(json.loads((folder / META_FILE).read_text()).get("epoch", -1))
    except (OSError, ValueError, AttributeError, TypeError):
        return -1


def _write_files(folder: Path, model, optimizer, config, cache, epoch, step, metrics) -> None:
    """The weights, the moments (each synced), then the JSON atomically: its presence says the folder is complete."""
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(folder / MODEL_FILE))
    opt = optimizer.state_dict()
    moments = {f"{i}.{name}": t.detach().contiguous().cpu() for i, st in opt["state"].items() for name, t in st.items()}
    save_file(moments, str(folder / OPTIMIZER_FILE))
    for name in (MODEL_FILE, OPTIMIZER_FILE):
        fsync_file(folder / name)
    meta = {"format": FORMAT, "package_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "epoch": epoch, "step": step, "config": config, "cache": cache_identity(cache),
            "optimizer": {"param_groups": opt["param_groups"]}, "metrics": metrics,
            "files_sha256": {name: _sha256(folder / name) for name in (MODEL_FILE, OPTIMIZER_FILE)}}
    with atomic_write(folder / META_FILE) as out:
        out.write_text(json.dumps(meta, indent=1) + "\n")


def read_meta(directory) -> dict:
    """The checkpoint's JSON, checked for format."""
    directory = Path(directory)
    path = directory / META_FILE
    if not path.is_file():
        if _complete(_sibling(directory, ".old")) or _complete(_sibling(directory, ".tmp")):
            raise CheckpointError(f"{directory}: a save was interrupted and left its checkpoint beside this name; "
                                  "`hoi train --resume` (the same --output) finishes the save and goes on")
        if _sibling(directory, ".tmp").exists():
            raise CheckpointError(f"{directory}: the run was stopped during its first checkpoint save, so there is "
                                  "nothing to resume from; start it again without --resume")
        raise CheckpointError(f"{directory}: no checkpoint here ({META_FILE} is missing); give the checkpoint "
                              "folder that `hoi train` wrote (RUN/checkpoint)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    except RecursionError:
        raise CheckpointError(f"{path}: nested too deeply to be a checkpoint") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path}: format {fmt!r}, this version reads {FORMAT!r}")
    if isinstance(meta.get("config"), dict) and "adapters" not in meta["config"]:
        raise CheckpointError(f"{path}: made by hoi-distill {meta.get('package_version')}, whose student had one "
                              "adapter named otherwise; retrain it (--adapters shared is that student)")
    _check_meta(meta, path)
    return meta


# What a checkpoint's JSON must hold, and of which type (JSON's: int is not bool).
_META_FIELDS = {"epoch": int, "step": int, "config": dict, "cache": dict, "optimizer": dict, "metrics": dict}
_CACHE_FIELDS = {"path": str, "fingerprint": str, "teacher": dict, "pair_rule": dict, "dataset": dict,
                 "layout": dict}


def _check_meta(meta: dict, path: Path) -> None:
    """Refuse a checkpoint JSON with a missing field or one of the wrong type, by name."""
    for fields, where, tree in ((_META_FIELDS, "", meta), (_CACHE_FIELDS, "cache.", meta.get("cache", {}))):
        for key, kind in fields.items():
            value = tree.get(key) if isinstance(tree, dict) else None
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise CheckpointError(f"{path}: field {where}{key} is {value!r}; a checkpoint has a "
                                      f"{kind.__name__} there (the file was edited or damaged: retrain)")
    if meta["epoch"] < 0 or meta["step"] < 0:
        raise CheckpointError(f"{path}: epoch {meta['epoch']} / step {meta['step']} cannot be negative")
    if not isinstance(meta["optimizer"].get("param_groups"), list):
        raise CheckpointError(f"{path}: field optimizer.param_groups is missing or not a list; retrain")
    from .config import ConfigError, TrainConfig

    try:
        TrainConfig.from_dict(meta["config"], source=f"{path}: config")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def weight_shapes(directory) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in the weights file, from its header alone (nothing is
    allocated: a tampered file cannot make the reader build a huge model first)."""
    from safetensors import safe_open

    path = Path(directory) / MODEL_FILE
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise CheckpointError(f"{path}: unreadable ({e}); the checkpoint is damaged: retrain, or resume from a "
                              "copy") from e


def check_shapes(directory, expected: dict[str, tuple[int, ...]]) -> None:
    """Refuse weights whose names or shapes differ from ``expected`` (a model's, built on the
    meta device), naming the first difference."""
    stored = weight_shapes(directory)
    for name in sorted(set(stored) | set(expected)):
        if stored.get(name) != expected.get(name):
            raise CheckpointError(f"{Path(directory) / MODEL_FILE}: tensor {name} is {stored.get(name)} in the file "
                                  f"but {expected.get(name)} in the student its config describes; the checkpoint "
                                  "does not belong to its own config (edited or damaged): retrain")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _check_hash(path: Path) -> None:
    """Refuse a weights file whose bytes are not those its checkpoint JSON recorded (a flipped
    byte would otherwise load and predict); a checkpoint written before hashes were recorded
    is read as it is."""
    try:
        recorded = json.loads((path.parent / META_FILE).read_text()).get("files_sha256", {})
    except (OSError, ValueError, AttributeError):
        return  # read_meta reports a missing or damaged JSON
    want = recorded.get(path.name) if isinstance(recorded, dict) else None
    if want is not None and _sha256(path) != want:
        raise CheckpointError(f"{path}: its bytes are not those {META_FILE} recorded (sha256 differs): the file "
                              "is damaged; retrain, or resume from a copy")


def _load(path: Path) -> dict[str, torch.Tensor]:
    _check_hash(path)
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
    here = json_form(cache_identity(cache))
    ident = {k: stored[k] for k in (*S.IDENTITY_ATTRS, "layout")}
    diff = S.first_difference(ident, {k: here[k] for k in ident}) or "fingerprint"
    raise CheckpointError(
        f"{directory} was trained on {stored['path']}, not on {cache.path}: {diff} is "
        f"{_short(S.lookup(ident, diff))} there but {_short(S.lookup(here, diff))} here. A run continues on "
        "its own cache only; start a new run (another --output) to train on this one")


def check_teacher(meta: dict, cache: TeacherCache, directory) -> None:
    """Refuse to apply a student to a cache made by another teacher (other CLIP, weights or
    prompts: its text embeddings and dense maps would mean something else)."""
    stored = meta["cache"]["teacher"]
    here = json_form(cache.teacher.to_attrs())
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
