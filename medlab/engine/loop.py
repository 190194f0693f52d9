"""The one training loop. It runs any LightningModule through its hooks and knows no objective.

Counters (two, never confused): ``micro_step`` counts micro-batches (forward/backward passes) and
``global_step`` counts optimizer steps. Gradient accumulation groups micro-batches into a *window*;
each micro-batch loss is scaled by ``w_i * world_size / W`` where ``w_i = module.batch_weight(batch)``
(e.g. its number of label tokens) and ``W`` is the window's total weight over all ranks. DDP averages
gradients over ranks, so the result equals the gradient of the mean loss over every item of the
window, whatever the micro-batch split: k micro-batches of n equal one batch of k*n.

Host syncs are limited to one per optimizer step (the finiteness of the gradient norm, needed to
skip a non-finite step on every rank consistently) plus the reductions at log/validation points.

RL objectives (``make_experience``): each loader batch becomes an *experience* of
``module.steps_per_experience`` windows (default 1; GRPO's mu inner iterations), i.e. that many optimizer
steps. Checkpoints (periodic and on a signal) are written only at experience boundaries, so a resumed run
regenerates the next experience from the restored RNG exactly as the uninterrupted run did.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader

from medlab.contracts import ExperienceObjective, Objective, objective_problems
from medlab.engine import checkpoint as ckpt
from medlab.engine import fsdp
from medlab.engine.progress import Progress, Throughput, format_metrics
from medlab.engine.sampler import ResumableBatchSampler

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class LoopConfig:
    max_steps: int | None = None
    max_epochs: int | None = None
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = 1.0
    val_every_n_steps: int | None = None
    limit_train_batches: int | None = None
    limit_val_batches: int | None = None
    log_every_n_steps: int = 10
    ckpt_every_n_steps: int | None = None
    keep_last_k: int = 2
    save_final_checkpoint: bool = True
    monitor: str = "val/loss"
    monitor_mode: str = "min"
    patience: int | None = None
    min_delta: float = 0.0
    on_nonfinite: str = "skip"
    progress_bar: bool = True
    seed: int = 0
    shuffle: bool = True
    num_workers: int = 0
    handle_signals: bool = True


@dataclass
class LoopState:
    global_step: int = 0
    micro_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens_seen: int = 0
    skipped_steps: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    last_val: dict = field(default_factory=dict)
    experience_step: int = 0  # windows of the current experience already stepped (0 = at a boundary)


@dataclass
class FitResult:
    state: LoopState
    train_metrics: dict
    val_metrics: dict
    status: str  # completed | early_stopped | interrupted
    seconds: float
    checkpoint: Path | None


def _sync_manual_grads(module) -> None:
    """Average every gradient over ranks in one flat all-reduce (what DDP does for modules that own backward)."""
    import torch.distributed as dist

    from torch.distributed.tensor import DTensor

    # FSDP2 reduces its sharded (DTensor) gradients itself; the replicated parameters' are averaged here
    grads = [p.grad for p in module.parameters() if p.grad is not None and not isinstance(p.grad, DTensor)]
    if not grads:
        return
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


def _unwrap_loss(out: Any) -> tuple[torch.Tensor, dict]:
    if isinstance(out, torch.Tensor):
        return out, {}
    if isinstance(out, dict) and "loss" in out:
        return out["loss"], {k: v for k, v in out.items() if k != "loss"}
    raise TypeError(f"training_step must return a loss tensor or a dict with 'loss', got {type(out).__name__}")


class Loop:
    """Fit a LightningModule with Lightning Fabric. See the module docstring for the accumulation maths."""

    def __init__(self, fabric, config: LoopConfig, run_dir: str | Path):
        self.fabric, self.cfg, self.run_dir = fabric, config, Path(run_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.state = LoopState()
        self.history: list[dict] = []  # every logged row, for notebooks and tests
        self._unsynced_tokens = 0  # this rank's tokens since the last cross-rank reduction
        self._stop_signal = False

    # ------------------------------------------------------------------ hooks
    def _hook(self, name: str, *args: Any) -> None:
        # fabric.setup_module registers a LightningModule as a Fabric callback: fabric.call then reaches it, so
        # call it directly only while it is not registered (hooks before setup), never twice.
        fn = getattr(self.module, name, None)
        if callable(fn) and self.module not in getattr(self.fabric, "_callbacks", ()):
            fn(*args)
        self.fabric.call(name, *args)

    # ------------------------------------------------------------------ data
    def _loader(self, dataset, sampler, collate) -> DataLoader:
        # A private generator: creating a DataLoader iterator draws a worker base seed, and drawing it from
        # the global RNG would shift dropout/sampling randomness after a resume (which re-creates the iterator).
        g = torch.Generator().manual_seed(self.cfg.seed * 100003 + sampler.epoch * 1009 + sampler.start_batch)
        dl = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=self.cfg.num_workers,
                        pin_memory=self.fabric.device.type == "cuda", generator=g)
        return self.fabric.setup_dataloaders(dl, use_distributed_sampler=False)

    def _batches_per_epoch(self) -> int:
        n = self.train_sampler.batches_per_epoch()
        return min(n, self.cfg.limit_train_batches) if self.cfg.limit_train_batches else n

    def _windows(self) -> Iterator[list]:
        """Yield accumulation windows; ``state.epoch/batch_in_epoch`` always name the next unread batch."""
        k = self.cfg.accumulate_grad_batches
        per_epoch = self._batches_per_epoch()
        while self.cfg.max_epochs is None or self.state.epoch < self.cfg.max_epochs:
            if self.state.batch_in_epoch >= per_epoch:
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
                continue
            if self.state.batch_in_epoch == 0:
                self._hook("on_train_epoch_start")
            self.train_sampler.set_position(self.state.epoch, self.state.batch_in_epoch)
            window = []
            for batch in self._loader(self.train_data, self.train_sampler, self.collate):
                if self.state.batch_in_epoch >= per_epoch:
                    break
                self.state.batch_in_epoch += 1
                if self._experiences:
                    experience = self._experience_windows(batch)
                    for j, exp_window in enumerate(experience):
                        self.state.experience_step = (j + 1) % len(experience)
                        yield exp_window
                    continue
                window.append(batch)
                if len(window) == k:
                    yield window
                    window = []
            if window:
                yield window  # a partial window at the end of an epoch still steps (weights renormalize)

    def _steps_per_experience(self) -> int:
        """Optimizer steps (windows) per experience of an :class:`~medlab.contracts.ExperienceObjective`; 1 otherwise."""
        if not self._experiences:
            return 1
        n = self.module.steps_per_experience
        if not (isinstance(n, int) and n >= 1):
            raise ValueError(f"module.steps_per_experience must be an integer >= 1, got {n!r}")
        return n

    def _experience_windows(self, batch) -> list[list]:
        # sharded: through Fabric's forward redirection, so the FSDP2 root gathers its parameters for it too
        out = list((self.fmodule if self._sharded else self.module).make_experience(batch))
        n = self._steps_per_experience()
        if len(out) != n:
            raise ValueError(f"make_experience returned {len(out)} windows; steps_per_experience is {n}")
        return [list(w) for w in out]

    # ------------------------------------------------------------------ setup
    def _total_steps(self) -> int:
        k = self.cfg.accumulate_grad_batches
        per_epoch = math.ceil(self._batches_per_epoch() / k)
        if self._experiences:
            per_epoch = self._batches_per_epoch() * self._steps_per_experience()
        candidates = []
        if self.cfg.max_steps is not None and self.cfg.max_steps > 0:
            candidates.append(self.cfg.max_steps)
        if self.cfg.max_epochs is not None and self.cfg.max_epochs > 0:
            candidates.append(self.cfg.max_epochs * per_epoch)
        if not candidates:
            raise ValueError("set trainer.max_steps or trainer.max_epochs")
        return min(candidates)

    def _setup(self, module) -> None:
        fabric = self.fabric
        if "deepspeed" in type(fabric.strategy).__name__.lower():
            opt_cfg = module.configure_optimizers()
            optimizer, scheduler = _split_optim(opt_cfg)
            self.fmodule, self.optimizer = fabric.setup(module, optimizer)
        else:
            self.fmodule = fabric.setup_module(module)
            optimizer, scheduler = _split_optim(module.configure_optimizers())
            self.optimizer = fabric.setup_optimizers(optimizer)
        if self._sharded and self._experiences and self.fmodule._forward_module is not module:
            self.fmodule.mark_forward_method("make_experience")
        self.scheduler = scheduler

    def _drop_short_last_batch(self, module, batch_size: int) -> None:
        """An objective whose loader batches need at least ``min_batch_prompts`` rows (PPO: enough completions for
        its mini-batches) drops each epoch's shorter last batch, with a warning, instead of failing on it
        mid-run; a batch size or a per-rank share below that minimum is an error before training starts."""
        need = int(getattr(module, "min_batch_prompts", 1) or 1)
        if need <= 1:
            return
        name = type(module).__name__
        per_rank = self.train_sampler.per_rank()
        if batch_size < need or per_rank < need:
            raise ValueError(f"{name} needs at least {need} prompts per batch (objective.num_mini_batches / "
                             f"objective.num_generations), but data.batch_size={batch_size} and each of the "
                             f"{self.fabric.world_size} rank(s) has {per_rank} training prompts")
        last = self.train_sampler.last_batch_size()
        if last < need:
            log.warning("the last batch of every epoch would hold %d prompt(s) per rank, fewer than the %d %s needs "
                        "to fill its mini-batches: it is dropped (%d of %d prompts per rank and epoch unused)",
                        last, need, name, last, per_rank)
            self.train_sampler.drop_last = True

    # ------------------------------------------------------------------ fit
    def fit(self, module, train_data, collate: Callable, *, batch_size: int, val_data=None,
            val_batch_size: int | None = None, resume: Path | None = None, lengths=None) -> FitResult:
        fabric, cfg = self.fabric, self.cfg
        if not isinstance(module, Objective):
            raise TypeError("the loop trains objectives (medlab.contracts.Objective): "
                            + "; ".join(objective_problems(type(module))))
        self.module, self.train_data, self.val_data, self.collate = module, train_data, val_data, collate
        self._experiences = isinstance(module, ExperienceObjective)
        self._sharded = type(fabric.strategy).__name__ == "ModelParallelStrategy"  # FSDP2 (medlab.engine.fsdp)
        self.train_sampler = ResumableBatchSampler(
            len(train_data), batch_size, shuffle=cfg.shuffle, seed=cfg.seed,
            rank=fabric.global_rank, world_size=fabric.world_size, lengths=lengths)
        self._drop_short_last_batch(module, batch_size)
        self.val_sampler = None
        if val_data is not None and len(val_data) > 0:
            # Sharded strategies need every rank to run the same number of forwards, so they pad by
            # wrapping around (a few rows count twice); otherwise ranks take uneven shards, counted once.
            sharded = self._sharded or any(k in type(fabric.strategy).__name__.lower() for k in ("fsdp", "deepspeed"))
            self.val_sampler = ResumableBatchSampler(
                len(val_data), val_batch_size or batch_size, shuffle=False,
                rank=fabric.global_rank, world_size=fabric.world_size, pad=sharded)
        self.total_steps = self._total_steps()
        module.estimated_stepping_batches = self.total_steps
        per_exp = self._steps_per_experience()
        if per_exp > 1 and self.total_steps % per_exp:
            log.warning("%d optimizer steps is not a multiple of the %d steps per experience: the last experience "
                        "is cut short", self.total_steps, per_exp)
        self._hook("on_fit_start")
        self._setup(module)
        if resume is not None:
            self._restore(resume)

        t_start = time.perf_counter()
        status = "completed"
        last_ckpt = None
        train_metrics: dict[str, float] = {}
        progress = Progress(self.total_steps, self.state.global_step, cfg.progress_bar and fabric.is_global_zero)
        throughput = Throughput(*_flops_info(module, fabric))
        log_loss, log_weight = torch.zeros((), device=fabric.device), 0
        ckpt_due = False
        self._install_signal_handler()
        self._hook("on_train_start")
        try:
            self.fmodule.train()
            windows = self._windows() if self.state.global_step < self.total_steps else iter(())
            for window in windows:
                loss_sum, weight, tokens, samples = self._step(window)
                log_loss += loss_sum
                log_weight += weight
                throughput.add(tokens, samples)
                progress.update()
                step = self.state.global_step

                if step % cfg.log_every_n_steps == 0 or step == self.total_steps:
                    train_metrics = self._log_train(log_loss, log_weight, throughput)
                    log_loss, log_weight = torch.zeros((), device=fabric.device), 0
                    progress.show(train_metrics)

                stop = False
                if self.val_sampler is not None and cfg.val_every_n_steps and step % cfg.val_every_n_steps == 0:
                    stop = self._validate_and_track(progress)
                if cfg.ckpt_every_n_steps and step % cfg.ckpt_every_n_steps == 0:
                    ckpt_due = True
                # Mid-experience (RL, several steps per experience) a checkpoint or a signal stop waits for
                # the experience's last step: the experience itself is not saved, so resume regenerates it.
                at_boundary = self.state.experience_step == 0
                if ckpt_due and at_boundary:
                    last_ckpt = self.save()
                    ckpt_due = False
                if self._stop_signal and at_boundary:
                    status = "interrupted"
                    log.warning("signal received: checkpointing at step %d and stopping", step)
                    break
                if stop:
                    status = "early_stopped"
                    break
                if step >= self.total_steps:
                    break
        finally:
            self._restore_signal_handler()
            progress.close()

        validated_now = self.state.last_val.get("_step") == self.state.global_step
        if status != "interrupted" and self.val_sampler is not None and not validated_now:
            self._validate_and_track(None)
        saved_now = last_ckpt is not None and last_ckpt.name.endswith(f"{self.state.global_step:08d}")
        if not saved_now and (status == "interrupted" or cfg.save_final_checkpoint):
            last_ckpt = self.save()
        self._hook("on_train_end")
        self._hook("on_fit_end")
        val = {k: v for k, v in self.state.last_val.items() if not k.startswith("_")}
        return FitResult(self.state, train_metrics, val, status, time.perf_counter() - t_start, last_ckpt)

    # ------------------------------------------------------------------ one optimizer step
    def _step(self, window: list) -> tuple[torch.Tensor, int, int, int]:
        fabric, module, cfg = self.fabric, self.module, self.cfg
        weights = [int(module.batch_weight(b)) for b in window]
        total = torch.tensor(float(sum(weights)), device=fabric.device)
        if fabric.world_size > 1:  # stays on the device: no host sync
            total = fabric.all_reduce(total, reduce_op="sum")
        scale_den = total.clamp(min=1.0)
        loss_sum = torch.zeros((), device=fabric.device)
        tokens = samples = 0
        owns_backward = bool(module.owns_backward)
        for i, (batch, w) in enumerate(zip(window, weights)):
            is_last = i == len(window) - 1
            self._hook("on_train_batch_start", batch, self.state.micro_step)
            scale = w * fabric.world_size / scale_den
            if owns_backward:
                # The module runs its own backward passes (GradCache: one per chunk) with this scale; DDP's
                # reducer allows one backward per forward, so all of them run unsynced and the gradients are
                # averaged once after the window (_sync_manual_grads). FSDP2 reduce-scatters after every backward
                # into the sharded gradients, which sum: the same average, no extra sync.
                module.loss_scale = scale
                with fabric.no_backward_sync(self.fmodule, enabled=fabric.world_size > 1 and not self._sharded):
                    loss, extra = _unwrap_loss(self.fmodule.training_step(batch, self.state.micro_step))
            else:
                with fabric.no_backward_sync(self.fmodule, enabled=not is_last):
                    loss, extra = _unwrap_loss(self.fmodule.training_step(batch, self.state.micro_step))
                    self._hook("on_before_backward", loss)
                    fabric.backward(loss * scale)
                    self._hook("on_after_backward")
            loss_sum = loss_sum + loss.detach().float() * w
            tokens += int(module.batch_tokens(batch))
            samples += len(batch["ids"]) if isinstance(batch, dict) and "ids" in batch else 1
            self._hook("on_train_batch_end", {"loss": loss.detach(), **extra}, batch, self.state.micro_step)
            self.state.micro_step += 1

        if owns_backward and fabric.world_size > 1:
            _sync_manual_grads(self.module)
        clip = cfg.gradient_clip_val if cfg.gradient_clip_val else float("inf")
        if "deepspeed" in type(fabric.strategy).__name__.lower():
            finite = bool(torch.isfinite(loss_sum).item())  # DeepSpeed clips internally
        else:
            norm = fsdp.local_norm(  # sharded gradients: the norm over all ranks' shards
                fabric.clip_gradients(self.fmodule, self.optimizer, max_norm=clip, error_if_nonfinite=False))
            self._last_grad_norm = norm.detach()
            finite = bool(torch.isfinite(norm).item())  # the step's single host sync
        if finite:
            self._hook("on_before_optimizer_step", self.optimizer)
            self._last_lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.step()
        else:
            self.state.skipped_steps += 1
            if cfg.on_nonfinite == "halt":
                raise NonFiniteLossError(f"non-finite loss or gradient at optimizer step {self.state.global_step + 1}")
            log.warning("non-finite gradient at step %d: step skipped on every rank (skipped so far: %d)",
                        self.state.global_step + 1, self.state.skipped_steps)
            loss_sum = torch.zeros_like(loss_sum)
            weights = [0]
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()  # per optimizer step, skipped or not, so the schedule length is fixed
        self.state.global_step += 1
        self._unsynced_tokens += tokens
        return loss_sum, sum(weights), tokens, samples

    # ------------------------------------------------------------------ logging
    def _log_train(self, loss_sum: torch.Tensor, weight: int, throughput: Throughput) -> dict:
        fabric = self.fabric
        packed = torch.stack([loss_sum.float(), torch.tensor(float(weight), device=fabric.device),
                              torch.tensor(float(self._unsynced_tokens), device=fabric.device)])
        if fabric.world_size > 1:
            packed = fabric.all_reduce(packed, reduce_op="sum")
        loss_total, w_total, tokens = packed.tolist()
        self.state.tokens_seen += int(tokens)  # a global count (all ranks)
        self._unsynced_tokens = 0
        metrics = {
            "train/loss": loss_total / w_total if w_total > 0 else float("nan"),
            "train/lr": getattr(self, "_last_lr", self.optimizer.param_groups[0]["lr"]),
            "train/epoch": float(self.state.epoch),
            "train/skipped_steps": float(self.state.skipped_steps),
            "train/tokens_seen": float(self.state.tokens_seen),
        }
        if hasattr(self, "_last_grad_norm"):
            metrics["train/grad_norm"] = float(self._last_grad_norm)
        metrics.update(throughput.compute(fabric.world_size))
        metrics.update(self._module_step_metrics())
        self._log(metrics)
        if fabric.is_global_zero:  # the job log (<run dir>/train.log under the CLI) keeps every log point
            log.info("step %d/%d: %s", self.state.global_step, self.total_steps, format_metrics(metrics))
        return metrics

    def _module_step_metrics(self) -> dict[str, float]:
        """``module.step_metrics()`` (what the objective measured since the last log point) as ``train/<key>``,
        averaged over ranks (keys whose last part contains "max" take the maximum). Every rank must return the
        same keys; rank 0's are the ones logged."""
        values = {k: float(v) for k, v in (self.module.step_metrics() or {}).items()}
        keys = sorted(values)
        fabric = self.fabric
        if fabric.world_size > 1:
            keys = fabric.broadcast(keys, src=0)
            if not keys:  # the objective measured nothing per step
                return {}
            is_max = [("max" in k.rsplit("/", 1)[-1]) for k in keys]
            t = torch.tensor([values.get(k, math.nan) for k in keys], device=fabric.device, dtype=torch.float32)
            summed = fabric.all_reduce(torch.where(torch.tensor(is_max, device=t.device), 0.0, t), reduce_op="sum")
            maxed = fabric.all_reduce(torch.where(torch.tensor(is_max, device=t.device), t, -math.inf), reduce_op="max")
            out = [m if mx else s / fabric.world_size for s, m, mx in zip(summed.tolist(), maxed.tolist(), is_max)]
            values = dict(zip(keys, out))
        return {f"train/{k}": values[k] for k in keys}

    def _log(self, metrics: dict) -> None:
        self.fabric.log_dict(metrics, step=self.state.global_step)
        self.history.append({"step": self.state.global_step, **metrics})

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        fabric, module = self.fabric, self.module
        self._hook("on_validation_start")
        self.fmodule.eval()
        sums: dict[str, torch.Tensor] = {}
        weight = torch.zeros((), device=fabric.device)
        self.val_sampler.set_position(0, 0)
        for i, batch in enumerate(self._loader(self.val_data, self.val_sampler, self.collate)):
            if self.cfg.limit_val_batches and i >= self.cfg.limit_val_batches:
                break
            out = self.fmodule.validation_step(batch, i)
            out = {"loss": out} if isinstance(out, torch.Tensor) else out
            w = float(module.batch_weight(batch))
            for k, v in out.items():
                sums[k] = sums.get(k, torch.zeros((), device=fabric.device)) + v.detach().float() * w
            weight += w
        keys = sorted(sums)
        if fabric.world_size > 1:  # a rank with an empty (uneven) shard learns the keys from rank 0
            keys = fabric.broadcast(keys, src=0)
        zero = torch.zeros((), device=fabric.device)
        packed = torch.stack([sums.get(k, zero) for k in keys] + [weight])
        if fabric.world_size > 1:
            packed = fabric.all_reduce(packed, reduce_op="sum")
        values = packed.tolist()
        metrics = {f"val/{k}": values[i] / values[-1] for i, k in enumerate(keys)} if values[-1] > 0 else {}
        metrics = module.validation_metrics(metrics)
        self.fmodule.train()
        self._hook("on_validation_end")
        self._log(metrics)
        return metrics

    def _validate_and_track(self, progress: Progress | None) -> bool:
        """Validate, update best/patience; return True when early stopping triggers."""
        cfg = self.cfg
        metrics = self.validate()
        self.state.last_val = {**metrics, "_step": self.state.global_step}
        if progress is not None:
            progress.show(metrics)
        if self.fabric.is_global_zero:
            log.info("step %d/%d validation: %s", self.state.global_step, self.total_steps, format_metrics(metrics))
        value = metrics.get(cfg.monitor)
        if value is None or not math.isfinite(value):
            return False
        sign = 1.0 if cfg.monitor_mode == "min" else -1.0
        best = self.state.best_metric
        if best is None or sign * (best - value) > cfg.min_delta:
            self.state.best_metric, self.state.best_step = value, self.state.global_step
            self.state.evals_without_improvement = 0
        else:
            self.state.evals_without_improvement += 1
        return bool(cfg.patience) and self.state.evals_without_improvement >= cfg.patience

    # ------------------------------------------------------------------ checkpoints
    def _sync_tokens(self) -> None:
        tokens = torch.tensor(float(self._unsynced_tokens), device=self.fabric.device)
        if self.fabric.world_size > 1:
            tokens = self.fabric.all_reduce(tokens, reduce_op="sum")
        self.state.tokens_seen += int(tokens.item())
        self._unsynced_tokens = 0

    def save(self) -> Path:
        fabric = self.fabric
        self._sync_tokens()  # the checkpoint holds the exact global count
        path = ckpt.save_checkpoint(
            self.ckpt_root, self.state.global_step, model=self.module, optimizer=self.optimizer,
            scheduler=self.scheduler, loop_state=asdict(self.state), rank=fabric.global_rank,
            world_size=fabric.world_size, keep_last=self.cfg.keep_last_k, barrier=fabric.barrier,
            # the best checkpoint by the monitored metric survives keep_last_k (evaluate/mine load it by default)
            protect=(self.state.best_step,) if self.state.best_step is not None else (),
            sharded=self._sharded,
        )
        fabric.barrier()
        log.info("saved checkpoint %s", path)
        return path

    def _restore(self, path: Path) -> None:
        loop_state = ckpt.load_checkpoint(path, model=self.module, optimizer=self.optimizer,
                                          scheduler=self.scheduler, rank=self.fabric.global_rank)
        self.state = LoopState(**loop_state)
        if self.state.experience_step:
            log.warning("checkpoint %s was written %d step(s) into an experience (the run ended there): resuming "
                        "starts the next experience, the rest of that one is skipped", path, self.state.experience_step)
            self.state.experience_step = 0
        self._rewind_loggers(self.state.global_step)
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.state.global_step,
                 self.state.epoch, self.state.batch_in_epoch)

    def _rewind_loggers(self, step: int) -> None:
        """Loggers forget what the crashed attempt logged after ``step`` (it is logged again)."""
        for lg in self.fabric.loggers:
            if hasattr(lg, "resume_at"):
                lg.resume_at(step)
            elif type(lg).__name__ == "TensorBoardLogger" and getattr(lg, "_experiment", None) is None:
                lg._kwargs["purge_step"] = step + 1  # SummaryWriter drops events after the checkpoint

    # ------------------------------------------------------------------ signals
    def _install_signal_handler(self) -> None:
        self._prev_handlers = {}
        if not self.cfg.handle_signals or threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):  # only sets a flag: the loop checkpoints at a step boundary
            self._stop_signal = True

        for sig in (signal.SIGTERM, signal.SIGUSR1):
            self._prev_handlers[sig] = signal.signal(sig, handler)

    def _restore_signal_handler(self) -> None:
        for sig, prev in getattr(self, "_prev_handlers", {}).items():
            signal.signal(sig, prev)


def _split_optim(cfg: Any):
    """Normalize what ``configure_optimizers`` returns to (optimizer, scheduler|None)."""
    if isinstance(cfg, torch.optim.Optimizer):
        return cfg, None
    if isinstance(cfg, dict):
        sched = cfg.get("lr_scheduler")
        if isinstance(sched, dict):
            if sched.get("interval", "step") != "step":
                raise ValueError("medlab steps schedulers per optimizer step: use interval='step'")
            sched = sched["scheduler"]
        return cfg["optimizer"], sched
    if isinstance(cfg, (tuple, list)) and len(cfg) == 2:
        opts, scheds = cfg
        return opts[0], (scheds[0] if scheds else None)
    raise TypeError(f"unsupported configure_optimizers() return: {type(cfg).__name__}")


def _flops_info(module, fabric) -> tuple[float | None, float | None]:
    """(training FLOPs per token, device peak FLOP/s) for MFU, only on CUDA and when the module knows."""
    if fabric.device.type != "cuda":
        return None, None
    try:
        from lightning.fabric.utilities.throughput import get_available_flops

        flops = module.flops_per_token()
        return (float(flops), get_available_flops(fabric.device, torch.bfloat16)) if flops else (None, None)
    except Exception:  # unknown GPU: no MFU rather than a crash
        return None, None
