"""One run: validate → build (Fabric, model, adapter, data, objective) → fit → export → metrics.

Used by the CLI (``python -m medlab``), tests and notebooks (``medlab.run(medlab.compose(...))``).
Returns a ``RunResult``: a float equal to the monitored validation metric (what Hydra sweepers such
as Optuna minimize) that also carries every final metric, the run dir and the logged history.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from medlab.config import ConfigError, redact, validate_config
from medlab.config.threads import resolve_cpu_threads
from medlab.engine import checkpoint as ckpt
from medlab.contracts import UsesRuns
from medlab.models.build import build_model, objective_class  # noqa: F401  (objective_class: re-exported)
from medlab.engine.fsdp import is_sharded
from medlab.engine.loop import Loop, LoopConfig

log = logging.getLogger("medlab")


class RunResult(float):
    """The monitored metric as a float, plus ``metrics``, ``run_dir`` and ``history``."""

    def __new__(cls, value: float, metrics: dict, run_dir: Path, history: list[dict]):
        obj = super().__new__(cls, value)
        obj.metrics, obj.run_dir, obj.history = metrics, run_dir, history
        return obj

    @property
    def objective(self) -> float:
        return float(self)


def loop_config(t: DictConfig) -> LoopConfig:
    es = t.get("early_stopping") or {}
    return LoopConfig(
        max_steps=t.max_steps, max_epochs=t.max_epochs, accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val, val_every_n_steps=t.val_every_n_steps,
        limit_train_batches=t.limit_train_batches, limit_val_batches=t.limit_val_batches,
        log_every_n_steps=t.log_every_n_steps, ckpt_every_n_steps=t.ckpt_every_n_steps,
        keep_last_k=t.keep_last_k, save_final_checkpoint=t.save_final_checkpoint, monitor=t.monitor,
        monitor_mode=t.monitor_mode, patience=es.get("patience"), min_delta=es.get("min_delta", 0.0),
        on_nonfinite=t.on_nonfinite, progress_bar=t.progress_bar, seed=t.seed, shuffle=t.get("shuffle", True),
    )


def build_fabric(cfg: DictConfig, callbacks: list | None = None):
    from hydra.utils import instantiate
    from lightning.fabric import Fabric

    s = cfg.strategy
    options = OmegaConf.to_container(s.options, resolve=True) if s.get("options") else {}
    strategy: Any = "auto" if s.name in ("single", "auto") else s.name
    accelerator = s.accelerator
    if accelerator == "auto" and not torch.cuda.is_available():
        accelerator = "cpu"
    precision = resolve_precision(str(s.precision), accelerator)
    if s.name == "fsdp":
        strategy = fsdp_strategy(s, options, accelerator)
        if str(s.precision) == "auto":
            precision = "32-true"  # the FSDP2 mixed precision policy (strategy.options.mixed_precision) does bf16
    elif options:
        strategy = {"ddp": "ddp"}.get(s.name, s.name)
    loggers = [instantiate(lc) for lc in (cfg.get("logger") or {}).values()]
    return Fabric(accelerator=accelerator, devices=s.devices, num_nodes=s.num_nodes, strategy=strategy,
                  precision=precision, loggers=loggers, callbacks=callbacks)


def fsdp_strategy(s: DictConfig, options: dict, accelerator: str):
    """``strategy=fsdp``: FSDP2 through Fabric's ModelParallelStrategy, all ranks data parallel (medlab.engine.fsdp)."""
    from lightning.fabric.strategies import ModelParallelStrategy

    from medlab.engine.fsdp import parallelize_fn

    devices = int(s.devices)
    if devices == -1:
        devices = torch.cuda.device_count() if accelerator != "cpu" else 1
    return ModelParallelStrategy(
        parallelize_fn=parallelize_fn(str(options.get("mixed_precision", "auto")),
                                      bool(options.get("reshard_after_forward", True))),
        data_parallel_size=devices * int(s.num_nodes), tensor_parallel_size=1)


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto``: bf16 mixed precision on a GPU that supports bf16 (fp32 master weights and optimizer state, bf16
    matmuls), fp32 everywhere else (bf16 autocast on CPU is slower than fp32 and changes the numbers)."""
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"


def _write_configs(cfg: DictConfig, run_dir: Path) -> None:
    hydra_cfg = run_dir / ".hydra" / "config.yaml"
    if not hydra_cfg.exists():  # composed outside @hydra.main (notebooks, tests): write what Hydra would
        hydra_cfg.parent.mkdir(parents=True, exist_ok=True)
        hydra_cfg.write_text(OmegaConf.to_yaml(redact(OmegaConf.to_container(cfg, resolve=False))))
    resolved = redact(OmegaConf.to_container(cfg, resolve=True))
    (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(resolved))


def _scrub_hydra_files(run_dir: Path) -> None:
    """Hydra wrote the raw config (and the override strings) before we could reject a secret: redact them."""
    import re

    assignment = re.compile(r"([\w.+~/-]*(?:api_?key|token|secret|password|passwd))=([^\s,'\"\]]+)", re.IGNORECASE)
    for f in (run_dir / ".hydra").glob("*.yaml"):
        data = redact(OmegaConf.to_container(OmegaConf.load(f), resolve=False))
        text = assignment.sub(r"\1=***", OmegaConf.to_yaml(data))
        f.write_text(text)


def _resolve_run_dir(cfg: DictConfig) -> Path:
    try:
        return Path(str(cfg.paths.run_dir)).resolve()
    except Exception as e:
        raise ConfigError([f"paths.run_dir cannot be resolved ({e}); outside the CLI use medlab.compose() "
                           "or set paths.run_dir"]) from None


def _validate(cfg: DictConfig, run_dir: Path) -> None:
    try:
        validate_config(cfg)
    except ConfigError as e:
        if any("secrets are read from the environment" in p for p in e.problems):
            _scrub_hydra_files(run_dir)
        raise


def _set_cpu_threads(cfg: DictConfig, fabric) -> int | None:
    """``trainer.cpu_threads`` (medlab.config.threads) -> ``torch.set_num_threads``; returns the count it
    replaced (to restore after the run) or None when it left torch's setting alone."""
    local = os.environ.get("LOCAL_WORLD_SIZE")
    per_node = int(local) if local else max(1, fabric.world_size // max(1, int(cfg.strategy.get("num_nodes") or 1)))
    before = torch.get_num_threads()
    n, why = resolve_cpu_threads(cfg.trainer.get("cpu_threads", "auto"), on_cpu=fabric.device.type == "cpu",
                                 processes_per_node=per_node, torch_default=before)
    if n is not None:
        torch.set_num_threads(n)
    log.info("cpu threads: %d (%s)", torch.get_num_threads(), why)
    return before if n is not None and n != before else None


def run(cfg: DictConfig, callbacks: list | None = None) -> RunResult:
    _setup_logging()
    run_dir = _resolve_run_dir(cfg)
    _validate(cfg, run_dir)

    fabric = build_fabric(cfg, callbacks)
    fabric.launch()
    previous_threads = _set_cpu_threads(cfg, fabric)
    try:
        return _run(cfg, fabric, run_dir)
    finally:
        if previous_threads is not None:  # a notebook's later work gets its own setting back
            torch.set_num_threads(previous_threads)


def _run(cfg: DictConfig, fabric, run_dir: Path) -> RunResult:
    from hydra.utils import instantiate

    # torchrun/SLURM ranks each compose their own Hydra run dir; rank 0's is the one.
    run_dir = Path(fabric.broadcast(str(run_dir), src=0))
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = _resume_point(cfg, run_dir)
    if fabric.is_global_zero:
        _write_configs(cfg, run_dir)
    t0 = time.perf_counter()

    fabric.seed_everything(cfg.trainer.seed)
    model, tokenizer, adapter = build_model(cfg, fabric)
    _speed_switches(model, cfg.trainer)  # training only: inference loads through build_model without them
    from medlab.models.adapters import count_parameters

    trainable, total = count_parameters(model)
    log.info("model %s: %s trainable / %s parameters (%.2f%%), adapter=%s", cfg.model.name, f"{trainable:,}",
             f"{total:,}", 100 * trainable / max(total, 1), adapter.kind + ("+4bit" if adapter.quantize else ""))

    data = instantiate(cfg.data)
    with fabric.rank_zero_first():  # rank 0 tokenizes and caches; the others read the cache
        data_counts = data.setup(tokenizer)  # logs kept/dropped counts by reason
    module = instantiate(cfg.objective, model=model, tokenizer=tokenizer)
    module.bind_data(data)  # medlab.contracts.Objective: what the objective reads from its data source
    if isinstance(module, UsesRuns):  # e.g. agentic GRPO: its search tools load a bi-encoder run
        from medlab.evaluation import load_run

        module.bind_run_loader(load_run)

    lcfg = loop_config(cfg.trainer)
    lcfg.num_workers = data.num_workers
    loop = Loop(fabric, lcfg, run_dir)
    result = loop.fit(module, data.train_dataset, data.collate, batch_size=data.batch_size,
                      val_data=data.val_dataset, val_batch_size=data.val_batch_size, resume=resume,
                      lengths=data.lengths() if data.group_by_length else None)

    export_dir = None
    if result.status != "interrupted":
        export_model = model
        if _exports(cfg) and is_sharded(module):  # FSDP2: gather the shards (collective), export on rank 0
            export_model = _consolidated_model(cfg, module, fabric.is_global_zero)
        if fabric.is_global_zero:
            export_dir = _export(cfg, export_model, tokenizer, run_dir, adapter)
    fabric.barrier()

    state = result.state
    metrics: dict[str, Any] = {
        "status": result.status, "global_step": state.global_step, "epoch": state.epoch,
        "tokens_seen": state.tokens_seen, "skipped_steps": state.skipped_steps,
        "train_seconds": round(result.seconds, 3), "total_seconds": round(time.perf_counter() - t0, 3),
        "trainable_params": trainable, "total_params": total, "cpu_threads": torch.get_num_threads(),
        **{f"data/{k}": v for k, v in data_counts.items() if isinstance(v, (int, float))},
        **{k: v for k, v in result.train_metrics.items()}, **result.val_metrics,
        "monitor": cfg.trainer.monitor,
        f"best/{cfg.trainer.monitor}": state.best_metric, "best_step": state.best_step,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "export_dir": str(export_dir) if export_dir else None,
    }
    objective = state.best_metric if state.best_metric is not None else metrics.get(cfg.trainer.monitor, math.nan)
    metrics["objective"] = objective
    if fabric.is_global_zero:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
        for lg in fabric.loggers:
            lg.finalize("success" if result.status != "interrupted" else "aborted")
        log.info("run dir: %s | %s", run_dir, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                                                       if k.startswith(("train/loss", "val/")) and isinstance(v, float)))
    return RunResult(float(objective) if objective is not None else math.nan, metrics, run_dir, loop.history)


def _speed_switches(model, t: DictConfig) -> None:
    """``trainer.activation_checkpointing`` / ``trainer.compile`` (medlab.models.speed), in place."""
    from medlab.models.speed import apply_activation_checkpointing, compile_model

    apply_activation_checkpointing(model, t.get("activation_checkpointing", False), bool(t.get("activation_offload")))
    if t.get("compile"):
        compile_model(model, mode=t.get("compile_mode"), backend=t.get("compile_backend") or "inductor")


def _resume_point(cfg: DictConfig, run_dir: Path) -> Path | None:
    resume = cfg.trainer.resume
    if resume in (None, "", "null") and ckpt.ckpt_dir_has_checkpoints(run_dir):
        raise ConfigError([f"{run_dir} already holds checkpoints from an earlier run: pass trainer.resume=auto "
                           "to continue it, or use a new run dir (reusing one never overwrites silently)"])
    return ckpt.resolve_resume(resume, run_dir)


def _exports(cfg: DictConfig) -> bool:
    from medlab.export import selected_exporters

    return bool(selected_exporters(cfg))


def _consolidated_model(cfg: DictConfig, module, is_rank_zero: bool):
    """Collective: the FSDP2-sharded objective's trainable weights gathered on rank 0 and loaded into a fresh,
    unsharded model built from the config (the frozen base rebuilds exactly as the run built it) -- the model a
    single-process run with these weights would export. Other ranks return None."""
    from hydra.utils import instantiate

    from medlab.engine.fsdp import full_state_dict

    weights = full_state_dict(module)
    if not is_rank_zero:
        return None
    model, tokenizer, _ = build_model(cfg)
    fresh = instantiate(cfg.objective, model=model, tokenizer=tokenizer)
    ckpt.apply_trainable(fresh, weights, "the gathered FSDP shards")
    return fresh.model


def _export(cfg: DictConfig, model, tokenizer, run_dir: Path, adapter) -> Path | None:
    """Every selected export format (medlab.export.EXPORTERS) into its folder of the run dir; returns the first."""
    from hydra.utils import instantiate

    from medlab.export import chat_export, selected_exporters

    chat = chat_export(cfg.data, tokenizer)  # the chat template the run trained with (None: the tokenizer's own)
    context = {"chat": chat, "adapter": adapter, "load_base": lambda: instantiate(cfg.model)()}
    context["objective"], context["data"] = cfg.objective, cfg.data  # retrieval runs: sentence-transformers files
    written = []
    for exporter in selected_exporters(cfg):
        if exporter.name == "merged" and written:
            context["adapter_dir"] = written[0]  # merge the adapter the hf export just wrote
        written.append(exporter.export(model, tokenizer, run_dir / exporter.out_subdir, **context))
    return written[0] if written else None


def _setup_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:  # Hydra configures logging under the CLI; notebooks get a plain handler
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    logging.getLogger("medlab").setLevel(logging.INFO)
