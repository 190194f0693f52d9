"""Atomic, resumable, pickle-free checkpoints.

On-disk layout (one directory per saved optimizer step)::

    run_dir/checkpoints/
        step-00000010/
            model.safetensors   trainable parameters only (LoRA adapters, or every weight for a full
                                fine-tune), keyed by ``model.named_parameters()`` names
            state.pt            {"optimizer", "scheduler", "loop", "trainable_keys", "format_version"}
            rng-rank0.pt        per-rank RNG state (see medlab.engine.rng), one file per rank
            rng-rank1.pt ...
            COMPLETE            JSON {step, time, world_size, format_version, files: {name: size}}
        .tmp-step-00000020-3f9a...   a save in progress or one that was interrupted: never read

Every ``.pt`` file is read with ``torch.load(weights_only=True)``, weights with safetensors, so a
checkpoint cannot execute code when it is loaded.

Atomicity argument. All files of a save are written into a fresh hidden ``.tmp-step-*`` directory
and fsynced; rank 0 then checks that every rank's file is there, writes ``COMPLETE`` last, fsyncs it
and the directory, and publishes the directory with one ``os.replace`` (an atomic rename on POSIX,
same filesystem) followed by an fsync of ``checkpoints/`` so the rename itself is durable. Readers
only consider ``step-*`` directories whose ``COMPLETE`` parses and whose listed files exist with the
recorded sizes. A process killed at any moment therefore leaves either the previous set of complete
checkpoints plus an ignored ``.tmp-*`` directory (removed by the next save), or the new complete
checkpoint. Directories are removed (pruning, replacing a same-step checkpoint) by first renaming
them to a ``.tmp-*`` name, so a deletion cut short never leaves a half-deleted ``step-*`` behind.

Distributed saving assumes a ``checkpoints/`` directory shared by all ranks. Replicated weights (single
device, DDP) are written by rank 0 as above. **Sharded** weights (``strategy=fsdp``, FSDP2 DTensors) are saved
with the same scheme, but every rank writes its own shard of the trainable weights and of the optimizer state
with ``torch.distributed.checkpoint`` (DCP) into the temp directory::

        step-00000010/                 format "sharded" (recorded in COMPLETE)
            .metadata                  DCP's index: every tensor's global shape and which shard holds which slice
            __0_0.distcp __1_0.distcp  rank r's slices of {"model": trainable weights, "optim": optimizer state},
                                       keyed by parameter name (not by rank layout)
            state.pt                   {"scheduler", "loop", "trainable_keys", "format_version", "format"}
            rng-rank0.pt rng-rank1.pt  per-rank RNG
            COMPLETE                   written by rank 0 after it saw every rank's shard, the metadata and RNG file

Loading reshards: DCP reads each tensor's slices by name into whatever layout the loading run has, so a sharded
checkpoint resumes on any number of processes (2 -> 1 loads full tensors without a process group), and a
replicated checkpoint resumes under FSDP (1 -> 2: each rank keeps its slice of the full tensors). Inference
(:func:`load_trainable`: evaluation, ``python -m medlab.export``) reads either format into an unsharded model,
which is how a sharded checkpoint is consolidated into a Hugging Face directory.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import secrets
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from medlab.engine.rng import capture_rng, restore_rng

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
COMPLETE = "COMPLETE"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
DCP_METADATA = ".metadata"  # torch.distributed.checkpoint's index of a sharded checkpoint
SHARDED = "sharded"
TMP_PREFIX = ".tmp-"
CHECKPOINTS_DIR = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_NO_RESUME = (None, "", "null", "none", "None")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt, unsafe or does not fit the model."""


# ----------------------------------------------------------------------------------------------
# names and discovery


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def rng_file_name(rank: int) -> str:
    return f"rng-rank{rank}.pt"


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step encoded in a ``step-XXXXXXXX`` directory name, else None."""
    match = _STEP_DIR.match(Path(path).name)
    return int(match.group(1)) if match else None


def is_complete(path: str | os.PathLike) -> bool:
    """True when ``path`` is a published checkpoint: COMPLETE parses and every listed file has its size."""
    return _incomplete_reason(Path(path)) is None


def list_checkpoints(ckpt_root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``ckpt_root``, oldest step first. Temp dirs are never returned."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        step = checkpoint_step(child)
        if step is None or not child.is_dir():
            continue
        reason = _incomplete_reason(child)
        if reason is None:
            found.append((step, child))
        else:
            log.warning("Ignoring checkpoint %s: %s", child, reason)
    return [path for _, path in sorted(found)]


def latest_checkpoint(ckpt_root: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step under ``ckpt_root``, or None."""
    checkpoints = list_checkpoints(ckpt_root)
    return checkpoints[-1] if checkpoints else None


def ckpt_dir_has_checkpoints(run_dir: str | os.PathLike) -> bool:
    """True when ``run_dir/checkpoints`` holds any ``step-*`` directory, complete or not.

    The engine refuses to start a fresh run in such a directory unless resuming is requested, so a
    new run never overwrites or interleaves with an old one. Leftover temp dirs alone do not count.
    """
    root = Path(run_dir) / CHECKPOINTS_DIR
    return root.is_dir() and any(checkpoint_step(c) is not None and c.is_dir() for c in root.iterdir())


def resolve_resume(resume: str | os.PathLike | None, run_dir: str | os.PathLike) -> Path | None:
    """Turn the ``resume`` config value into a checkpoint directory, or None for a fresh start.

    - ``None`` / ``""`` / ``"null"``: fresh start.
    - ``"auto"``: latest complete checkpoint in ``run_dir/checkpoints``, or None (fresh start, logged).
    - any other path: a complete checkpoint directory, or a run dir / checkpoints dir holding one
      (its latest is taken). Anything else raises :class:`CheckpointError` naming the path and the reason.
    """
    if resume in _NO_RESUME:
        return None
    if str(resume) == "auto":
        root = Path(run_dir) / CHECKPOINTS_DIR
        latest = latest_checkpoint(root)
        if latest is None:
            log.info("resume=auto: no complete checkpoint in %s, starting fresh.", root)
        else:
            log.info("resume=auto: resuming from %s.", latest)
        return latest

    path = Path(resume).expanduser()
    if not path.exists():
        raise CheckpointError(f"Cannot resume from {path}: the path does not exist.")
    if not path.is_dir():
        raise CheckpointError(f"Cannot resume from {path}: not a directory (expected a checkpoint directory).")
    if _looks_like_checkpoint(path):
        reason = _incomplete_reason(path)
        if reason is not None:
            raise CheckpointError(f"Cannot resume from {path}: {reason}.")
        return path
    for root in (path / CHECKPOINTS_DIR, path):
        if not root.is_dir():
            continue
        latest = latest_checkpoint(root)
        if latest is not None:
            log.info("Resuming from %s (latest complete checkpoint in %s).", latest, root)
            return latest
        candidates = sorted(c.name for c in root.iterdir() if checkpoint_step(c) is not None)
        if candidates:
            raise CheckpointError(
                f"Cannot resume from {path}: no complete checkpoint in {root} "
                f"({', '.join(candidates)} exist but none is complete; see the warnings above)."
            )
    raise CheckpointError(
        f"Cannot resume from {path}: it is neither a checkpoint directory (no {COMPLETE} marker) "
        f"nor a run or checkpoints directory holding a step-* checkpoint."
    )


# ----------------------------------------------------------------------------------------------
# weights


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module under Fabric, DDP and ``torch.compile`` wrappers (their names add prefixes)."""
    while True:
        if hasattr(model, "_original_module"):  # lightning.fabric _FabricModule
            model = model._original_module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies of the parameters with ``requires_grad=True``.

    For a peft LoRA model that is the adapter weights only; for a full fine-tune, every parameter.
    Tied parameters appear once (``named_parameters`` deduplicates them); distinct parameters that
    share storage are cloned, because safetensors refuses shared storage.
    """
    out: dict[str, torch.Tensor] = {}
    seen_storage: set[int] = set()
    for name, param in unwrap_model(model).named_parameters():
        if not param.requires_grad:
            continue
        tensor = param.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen_storage or storage.nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()
        seen_storage.add(tensor.untyped_storage().data_ptr())
        out[name] = tensor
    return out


def _load_weights(model, path: Path, map_location) -> None:
    """A complete checkpoint's trainable weights into ``model`` (CheckpointError when incomplete or unreadable)."""
    reason = _incomplete_reason(path)
    if reason is not None:
        raise CheckpointError(f"Cannot load checkpoint {path}: {reason}.")
    try:
        weights = load_file(str(path / MODEL_FILE), device=str(map_location))
    except Exception as exc:
        raise CheckpointError(f"Cannot read {path / MODEL_FILE}: {exc}") from exc
    _apply_trainable(model, weights, path / MODEL_FILE)


def _apply_trainable(model: nn.Module, weights: dict[str, torch.Tensor], source: Path) -> None:
    params = {n: p for n, p in unwrap_model(model).named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(weights))
    unexpected = sorted(set(weights) - set(params))
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not fit the model's trainable parameters "
            f"(checkpoint: {len(weights)} tensors, model: {len(params)} trainable). "
            f"Missing from the checkpoint: {_names(missing)}. Unexpected in the checkpoint: {_names(unexpected)}. "
            "Was the run resumed with a different adapter / fine-tuning config (e.g. LoRA vs full)?"
        )
    bad_shapes = [
        f"{n} {tuple(weights[n].shape)} vs {tuple(p.shape)}" for n, p in params.items() if weights[n].shape != p.shape
    ]
    if bad_shapes:
        raise CheckpointError(f"{source}: shape mismatch (checkpoint vs model): {_names(bad_shapes)}.")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(weights[name])


def load_trainable(model: nn.Module, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Path:
    """Load only the trainable weights of the checkpoint ``path`` into ``model`` (inference: no optimizer,
    scheduler or RNG state) and return ``path``.

    The checkpoint must be complete, and its weight names and shapes must equal the model's trainable
    parameters (the run's adapter / fine-tuning config rebuilt): :class:`CheckpointError` otherwise."""
    path = Path(path)
    if is_sharded_checkpoint(path):
        reason = _incomplete_reason(path)
        if reason is not None:
            raise CheckpointError(f"Cannot load checkpoint {path}: {reason}.")
        _load_sharded(path, model, None)
    else:
        _load_weights(model, path, map_location)
    return path


def apply_trainable(model: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``weights`` (keyed by ``named_parameters()`` names) into ``model``'s trainable parameters; the names
    and shapes must be exactly the trainable ones (:class:`CheckpointError` naming ``source`` otherwise)."""
    _apply_trainable(model, weights, Path(source))


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    """True when the checkpoint ``path`` was saved sharded (``strategy=fsdp``)."""
    return (Path(path) / DCP_METADATA).is_file()


def read_loop_state(path: str | os.PathLike) -> dict:
    """The loop state a complete checkpoint recorded (``global_step``, ``best_metric``, ``best_step``,
    ``last_val``, ...), read without loading the optimizer state into memory (``mmap``)."""
    path = Path(path)
    reason = _incomplete_reason(path)
    if reason is not None:
        raise CheckpointError(f"Cannot read checkpoint {path}: {reason}.")
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CheckpointError(f"Cannot read {path / STATE_FILE}: {exc}") from exc
    loop = state.get("loop") if isinstance(state, dict) else None
    if not isinstance(loop, dict):
        raise CheckpointError(f"{path / STATE_FILE} holds no loop state.")
    return loop


def _names(names: list[str], limit: int = 20) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names) - limit} more)"


# ----------------------------------------------------------------------------------------------
# save


def save_checkpoint(
    ckpt_root: str | os.PathLike,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    loop_state: dict,
    rank: int = 0,
    world_size: int = 1,
    keep_last: int | None = 3,
    barrier: Callable[[], None] | None = None,
    protect: Collection[int] = (),
    sharded: bool = False,
) -> Path:
    """Atomically save ``ckpt_root/step-{step:08d}`` and return its path (see the module docstring).

    Collective: every rank calls it with the same arguments; ``barrier`` (``fabric.barrier``) syncs them.
    Rank 0 writes weights, ``state.pt`` and the ``COMPLETE`` marker; every rank writes its RNG file.
    An error on any rank still passes all three barriers, so no rank hangs, and every rank raises.
    Then rank 0 deletes complete checkpoints beyond the newest ``keep_last`` (None or <= 0: keep all),
    checkpoints with a higher step (an abandoned timeline after resuming from an older one) and stale
    temp dirs. ``protect``: steps whose checkpoint pruning keeps on top of the newest ``keep_last`` (e.g. the
    best step, so evaluation can load it). ``loop_state`` may hold only ints, floats, bools, str, None, tensors,
    lists and dicts. ``sharded``: the model's parameters are FSDP2 shards; every rank writes its slices of the
    trainable weights and the optimizer state (see the module docstring); the other files are the same.
    """
    if sharded:
        return _save_sharded(root=Path(ckpt_root), step=step, model=model, optimizer=optimizer, scheduler=scheduler,
                             loop_state=loop_state, rank=rank, world_size=world_size, keep_last=keep_last,
                             barrier=barrier or (lambda: None), protect=protect)
    barrier = barrier or (lambda: None)
    rng_state = capture_rng()  # first, before anything could draw
    root = Path(ckpt_root)
    final = root / step_dir_name(step)
    tmp: Path | None = None
    error: Exception | None = None

    if rank == 0:
        try:
            state = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "loop": loop_state,
                "trainable_keys": [],
                "format_version": FORMAT_VERSION,
            }
            _check_weights_only_safe(state, "state")
            tmp = _make_tmp_dir(root, step)
        except Exception as exc:  # noqa: BLE001 - re-raised after the barriers
            error = exc
    barrier()  # 1: the temp dir exists

    if error is None:
        try:
            if rank != 0:
                tmp = _find_tmp_dir(root, step)
            _torch_save(rng_state, tmp / rng_file_name(rank))
            if rank == 0:
                weights = trainable_state_dict(model)
                state["trainable_keys"] = list(weights)
                save_file(weights, str(tmp / MODEL_FILE), metadata={"format": "pt", "step": str(step)})
                _fsync_file(tmp / MODEL_FILE)
                _torch_save(state, tmp / STATE_FILE)
        except Exception as exc:  # noqa: BLE001
            error = exc
    barrier()  # 2: every rank's files are written and fsynced
    return _publish(tmp, final, step, rank=rank, world_size=world_size, error=error, barrier=barrier, root=root,
                    keep_last=keep_last, protect=protect)


def _publish(tmp, final: Path, step: int, *, rank: int, world_size: int, error, barrier, root: Path, keep_last,
             protect, fmt: str | None = None) -> Path:
    """After every rank wrote its files: rank 0 commits (COMPLETE last, rename), every rank learns the outcome, and
    the old checkpoints are pruned. Shared by the one-file and the sharded saves."""
    if rank == 0 and error is None:
        try:
            _commit(tmp, final, step, world_size, fmt)
        except Exception as exc:  # noqa: BLE001
            error = exc
    barrier()  # 3: published (or failed)

    if error is not None:
        raise error
    if not is_complete(final):
        raise CheckpointError(f"Rank {rank}: checkpoint {final} was not published (rank 0 failed to commit it).")
    if rank == 0:
        _prune(root, step, keep_last, protect)
    return final


def _make_tmp_dir(root: Path, step: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    # Other ranks find the temp dir by its step prefix, so there must be exactly one.
    for stale in root.glob(f"{TMP_PREFIX}step-{step:08d}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f"{TMP_PREFIX}step-{step:08d}-{secrets.token_hex(4)}"
    tmp.mkdir()
    return tmp


def _find_tmp_dir(root: Path, step: int) -> Path:
    found = list(root.glob(f"{TMP_PREFIX}step-{step:08d}-*"))
    if len(found) != 1:
        raise CheckpointError(
            f"Expected exactly one temp dir for step {step} in {root}, found {len(found)}: "
            "all ranks must see the same checkpoint directory (a shared filesystem)."
        )
    return found[0]


def _commit(tmp: Path, final: Path, step: int, world_size: int, fmt: str | None = None) -> None:
    required = [rng_file_name(r) for r in range(world_size)]
    if fmt == SHARDED:
        required += [DCP_METADATA, *(shard_file_name(r) for r in range(world_size))]
    missing = [name for name in required if not (tmp / name).is_file()]
    if missing:
        raise CheckpointError(
            f"Checkpoint {final}: {', '.join(missing)} not written; all ranks must share the checkpoint directory."
        )
    files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    marker = {
        "step": step,
        "time": time.time(),
        "time_iso": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "world_size": world_size,
        "format_version": FORMAT_VERSION,
        "files": files,
    }
    if fmt is not None:
        marker["format"] = fmt
    _fsync_dir(tmp)
    with open(tmp / COMPLETE, "w") as f:
        json.dump(marker, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    replaced = None
    if final.exists():
        # os.replace cannot overwrite a non-empty dir: move the old one aside (to an ignored name) first.
        replaced = final.with_name(f"{TMP_PREFIX}replaced-{final.name}-{secrets.token_hex(4)}")
        os.replace(final, replaced)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)


def _prune(root: Path, step: int, keep_last: int | None, protect: Collection[int] = ()) -> None:
    complete = list_checkpoints(root)
    newer = [p for p in complete if checkpoint_step(p) > step]
    if newer:
        log.warning(
            "Deleting checkpoints newer than step %d, from an abandoned timeline (the run resumed from an "
            "older checkpoint): %s",
            step,
            ", ".join(p.name for p in newer),
        )
    older = [p for p in complete if checkpoint_step(p) <= step]
    kept = set(protect)
    doomed = newer + [p for p in (older[:-keep_last] if keep_last and keep_last > 0 else [])
                      if checkpoint_step(p) not in kept]
    for path in doomed:
        _remove_dir(path)
    for stale in root.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    if doomed:
        _fsync_dir(root)


def _remove_dir(path: Path) -> None:
    aside = path.with_name(f"{TMP_PREFIX}delete-{path.name}-{secrets.token_hex(4)}")
    os.replace(path, aside)  # atomic: the step-* dir disappears whole, never half-deleted
    shutil.rmtree(aside, ignore_errors=True)


def _torch_save(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory file descriptors (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_SAFE_LEAVES = (str, bytes, int, float, complex, bool, type(None), torch.Tensor, torch.dtype, torch.device)


def _check_weights_only_safe(obj: Any, where: str) -> None:
    """Raise at save time, not days later at resume, if ``obj`` would not load with ``weights_only=True``."""
    if isinstance(obj, torch.Tensor) or type(obj) in _SAFE_LEAVES or type(obj) is torch.Size:
        return
    if type(obj) in (dict, OrderedDict):
        for key, value in obj.items():
            _check_weights_only_safe(key, f"{where} key")
            _check_weights_only_safe(value, f"{where}[{key!r}]")
        return
    if type(obj) in (list, tuple, set):
        for i, value in enumerate(obj):
            _check_weights_only_safe(value, f"{where}[{i}]")
        return
    raise CheckpointError(
        f"Cannot save {where}: a {type(obj).__module__}.{type(obj).__qualname__} would not load with "
        "torch.load(weights_only=True); store plain ints/floats/str/lists/dicts/tensors instead."
    )


# ----------------------------------------------------------------------------------------------
# load


def load_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    rank: int = 0,
    map_location: str | torch.device = "cpu",
) -> dict:
    """Restore weights, optimizer, scheduler and this rank's RNG from ``path``; return the loop state.

    Verifies completeness and file sizes first, requires the saved weight names to equal the model's
    trainable parameter names, and loads every ``.pt`` file with ``weights_only=True``. A missing
    ``rng-rank{rank}.pt`` (resuming with more ranks) falls back to rank 0's state with a warning.
    """
    path = Path(path)
    state = None
    if is_sharded_checkpoint(path):
        reason = _incomplete_reason(path)
        if reason is not None:
            raise CheckpointError(f"Cannot load checkpoint {path}: {reason}.")
        _load_sharded(path, model, optimizer)
        optimizer = None  # restored with the weights
    elif _has_dtensors(model):
        state = _load_replicated_into_sharded(path, model, optimizer, map_location)
        optimizer = None
    else:
        _load_weights(model, path, map_location)

    state = state if state is not None else _safe_load(path / STATE_FILE, map_location)
    version = state.get("format_version") if isinstance(state, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path / STATE_FILE}: format_version {version!r}, this medlab reads {FORMAT_VERSION}.")
    if optimizer is not None:
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{path / STATE_FILE}: optimizer state does not fit the optimizer: {exc}") from exc
    if scheduler is not None:
        if state["scheduler"] is None:
            log.warning("%s holds no scheduler state; the scheduler starts from scratch.", path)
        else:
            scheduler.load_state_dict(state["scheduler"])

    rng_path = path / rng_file_name(rank)
    if not rng_path.is_file():
        log.warning(
            "%s is missing (the checkpoint was saved with a different world size): restoring rank 0's RNG state.",
            rng_path,
        )
        rng_path = path / rng_file_name(0)
    restore_rng(_safe_load(rng_path, "cpu"))
    return state["loop"]


def _safe_load(path: Path, map_location: str | torch.device) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} is not a safe checkpoint: it contains pickled Python objects that "
            f"torch.load(weights_only=True) refuses to load. Refusing to load it. ({str(exc).splitlines()[0]})"
        ) from exc
    except Exception as exc:
        raise CheckpointError(f"Cannot read {path}: {exc}") from exc


def _looks_like_checkpoint(path: Path) -> bool:
    return (
        checkpoint_step(path) is not None
        or path.name.startswith(TMP_PREFIX)
        or any((path / name).exists() for name in (COMPLETE, MODEL_FILE, STATE_FILE))
    )


def _incomplete_reason(path: Path) -> str | None:
    """Why ``path`` is not a usable checkpoint, or None when it is."""
    if path.name.startswith(TMP_PREFIX):
        return "it is a temporary directory of a save that did not finish"
    if not path.is_dir():
        return "the directory does not exist"
    marker_path = path / COMPLETE
    if not marker_path.is_file():
        return f"no {COMPLETE} marker: the save was interrupted (or this is not a medlab checkpoint)"
    try:
        marker = json.loads(marker_path.read_text())
        files = marker["files"]
        if not isinstance(files, Mapping):
            raise TypeError("'files' is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"the {COMPLETE} marker is unreadable ({exc})"
    weights = DCP_METADATA if marker.get("format") == SHARDED else MODEL_FILE
    for required in (weights, STATE_FILE, rng_file_name(0)):
        if required not in files:
            return f"the {COMPLETE} marker does not list {required}"
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        actual = file.stat().st_size
        if actual != size:
            return f"{name} is truncated or altered: {actual} bytes on disk, {size} recorded when saved"
    return None


# ----------------------------------------------------------------------------------------------
# sharded (FSDP2) checkpoints


def shard_file_name(rank: int) -> str:
    """The file DCP's ``FileSystemWriter`` writes for ``rank`` (one file per rank)."""
    return f"__{rank}_0.distcp"


def _has_dtensors(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in unwrap_model(model).parameters())


def _plain_optimizer(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # lightning's _FabricOptimizer wraps the real one


def _trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by name, detached (DTensor shards stay DTensors: DCP writes/reads their slices)."""
    return {n: p.detach() for n, p in unwrap_model(model).named_parameters() if p.requires_grad}


def _any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on any rank (no process group: ``flag``)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _save_sharded(*, root: Path, step: int, model, optimizer, scheduler, loop_state: dict, rank: int,
                  world_size: int, keep_last: int | None, barrier: Callable[[], None],
                  protect: Collection[int]) -> Path:
    """Every rank writes its shards with DCP into the temp dir; otherwise the replicated scheme (see save_checkpoint)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    rng_state = capture_rng()
    final = root / step_dir_name(step)
    tmp: Path | None = None
    error: Exception | None = None
    weights = _trainable_tensors(model)
    if rank == 0:
        try:
            state = {"optimizer": None, "scheduler": scheduler.state_dict() if scheduler is not None else None,
                     "loop": loop_state, "trainable_keys": list(weights), "format_version": FORMAT_VERSION,
                     "format": SHARDED}
            _check_weights_only_safe(state, "state")
            tmp = _make_tmp_dir(root, step)
        except Exception as exc:  # noqa: BLE001 - re-raised after the barriers
            error = exc
    barrier()  # 1: the temp dir exists
    try:
        if error is None and rank != 0:
            tmp = _find_tmp_dir(root, step)
    except Exception as exc:  # noqa: BLE001
        error = exc
    if not _any_rank(error is not None):  # DCP's save is collective: every rank enters it or none does
        try:
            optim = get_optimizer_state_dict(unwrap_model(model), _plain_optimizer(optimizer))
            dcp.save({"model": weights, "optim": optim},
                     storage_writer=dcp.FileSystemWriter(str(tmp), sync_files=True))
            _torch_save(rng_state, tmp / rng_file_name(rank))
            if rank == 0:
                _torch_save(state, tmp / STATE_FILE)
        except Exception as exc:  # noqa: BLE001
            error = exc
    elif error is None:
        error = CheckpointError(f"Rank {rank}: checkpoint {final} not saved: another rank failed first.")
    barrier()  # 2: every rank's shard, the metadata and every RNG file are written and fsynced
    return _publish(tmp, final, step, rank=rank, world_size=world_size, error=error, barrier=barrier, root=root,
                    keep_last=keep_last, protect=protect, fmt=SHARDED)


def _sharded_keys(path: Path) -> set[str]:
    import torch.distributed.checkpoint as dcp

    try:
        meta = dcp.FileSystemReader(str(path)).read_metadata()
    except Exception as exc:
        raise CheckpointError(f"Cannot read {path / DCP_METADATA}: {exc}") from exc
    return set(meta.state_dict_metadata)


def _load_sharded(path: Path, model: nn.Module, optimizer) -> None:
    """A sharded checkpoint into ``model`` (sharded or not: DCP reshards by name) and, if given, ``optimizer``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    weights = _trainable_tensors(model)
    saved = {k[len("model."):] for k in _sharded_keys(path) if k.startswith("model.")}
    missing, unexpected = sorted(set(weights) - saved), sorted(saved - set(weights))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit the model's trainable parameters (checkpoint: {len(saved)} tensors, model: "
            f"{len(weights)} trainable). Missing from the checkpoint: {_names(missing)}. Unexpected in the "
            f"checkpoint: {_names(unexpected)}. Was the run resumed with a different adapter / fine-tuning config "
            "(e.g. LoRA vs full)?")
    state: dict[str, Any] = {"model": weights}
    plain = unwrap_model(model)
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(plain, _plain_optimizer(optimizer))  # the layout to read into
    try:
        with torch.no_grad():
            dcp.load(state, storage_reader=dcp.FileSystemReader(str(path)))
    except Exception as exc:
        raise CheckpointError(f"Cannot load the sharded checkpoint {path}: {exc}") from exc
    if optimizer is not None:
        set_optimizer_state_dict(plain, _plain_optimizer(optimizer), state["optim"])


def _load_replicated_into_sharded(path: Path, model: nn.Module, optimizer, map_location) -> dict:
    """A replicated checkpoint (one process or DDP) into a sharded model: every rank reads the full tensors and
    keeps its slices; the optimizer state is re-keyed from positions to parameter names. Returns ``state.pt``."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    reason = _incomplete_reason(path)
    if reason is not None:
        raise CheckpointError(f"Cannot load checkpoint {path}: {reason}.")
    try:
        weights = load_file(str(path / MODEL_FILE), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"Cannot read {path / MODEL_FILE}: {exc}") from exc
    plain = unwrap_model(model)
    trainable = _trainable_tensors(plain)
    missing, unexpected = sorted(set(trainable) - set(weights)), sorted(set(weights) - set(trainable))
    if missing or unexpected:
        raise CheckpointError(
            f"{path / MODEL_FILE} does not fit the model's trainable parameters. Missing from the checkpoint: "
            f"{_names(missing)}. Unexpected in the checkpoint: {_names(unexpected)}.")
    full = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(plain, weights, options=full)
    state = _safe_load(path / STATE_FILE, "cpu")
    if optimizer is not None and isinstance(state, dict) and state.get("optimizer") is not None:
        opt = _plain_optimizer(optimizer)
        names = {id(p): n for n, p in plain.named_parameters()}
        order = [names[id(p)] for g in opt.param_groups for p in g["params"]]
        saved = state["optimizer"]
        try:
            keyed = {"state": {order[i]: v for i, v in saved["state"].items()},
                     "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in saved["param_groups"]]}
        except (IndexError, KeyError) as exc:
            raise CheckpointError(f"{path / STATE_FILE}: optimizer state does not fit the optimizer: {exc}") from exc
        set_optimizer_state_dict(plain, opt, keyed, options=full)
    return state
