"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for any objective, through Fabric's ``ModelParallelStrategy``.

``strategy=fsdp`` shards every parameter, gradient and optimizer state over the data-parallel ranks:

- **Blocks from the model.** :func:`find_blocks` finds the repeated transformer blocks without knowing the
  architecture: the children of every ``nn.ModuleList`` whose children all share one class and hold parameters
  (Llama/Qwen ``layers``, BERT ``encoder.layer``, a VLM's vision ``blocks`` and text ``layers``), outermost lists
  only (an MoE's expert list inside a block stays in its block). Each block is one ``fully_shard`` unit (its
  parameters are gathered just before its forward/backward and freed after); the root unit holds the rest
  (embeddings, final norm, heads) and is applied to a thin wrapper around the objective, so Fabric routes
  ``training_step`` / ``validation_step`` through the root's forward (``_FabricModule``'s forward redirection)
  and the root parameters are gathered for the whole step, whatever the objective reads directly (the chunked
  cross-entropy reads ``lm_head.weight``). Parameter names are unchanged (the wrapper is not in them).
- **Mixed precision.** ``strategy.options.mixed_precision``: ``auto`` (bf16 parameters for compute, fp32
  gradient reduction and fp32 master weights on a GPU; fp32 on CPU, where bf16 is slower and changes the
  numbers), ``bf16`` or ``fp32``.
- **LoRA / frozen weights.** ``fully_shard`` accepts a unit that mixes frozen and trainable parameters: the frozen
  base is sharded like everything else, only the adapter parameters get gradients and optimizer state.
- Activation checkpointing (``trainer.activation_checkpointing``, applied to the blocks before sharding) composes:
  it acts inside a block and sharding wraps the block from outside (tested: same losses as one process).
  ``trainer.compile`` (per block, also before sharding) follows the same pattern but is not tested under FSDP2.

Checkpoints are sharded (``medlab.engine.checkpoint``, ``format: sharded``), and :func:`full_state_dict` gathers
the trainable weights on rank 0 for the export.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

MIXED_PRECISION = ("auto", "bf16", "fp32")


class ShardedRoot(nn.Module):
    """The outermost FSDP2 unit: holds the objective so that Fabric calls its steps through this forward."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


def find_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of ``model`` in module order: children of the outermost homogeneous ``ModuleList``s."""
    lists: list[tuple[str, nn.ModuleList]] = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        kinds = {type(child) for child in mod}
        if len(kinds) != 1 or not any(True for _ in mod.parameters()):
            continue
        if any(name.startswith(outer + ".") for outer, _ in lists):
            continue  # nested inside a block already found
        lists.append((name, mod))
    return [block for _, mod in lists for block in mod]


def mp_policy(mixed_precision: str, device_type: str):
    """The ``MixedPrecisionPolicy`` for ``strategy.options.mixed_precision`` on this device (see module doc)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    bf16 = mixed_precision == "bf16" or (mixed_precision == "auto" and device_type == "cuda")
    if bf16:
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def parallelize_fn(mixed_precision: str = "auto", reshard_after_forward: bool = True) -> Callable:
    """A ``ModelParallelStrategy`` ``parallelize_fn``: ``fully_shard`` per block, then the root (see module doc)."""

    def parallelize(module: nn.Module, device_mesh) -> nn.Module:
        from torch.distributed.fsdp import FSDPModule, fully_shard

        mesh = device_mesh["data_parallel"] if "data_parallel" in (device_mesh.mesh_dim_names or ()) else device_mesh
        policy = mp_policy(mixed_precision, mesh.device_type)
        blocks = find_blocks(module)
        kwargs = {"mesh": mesh, "mp_policy": policy, "reshard_after_forward": reshard_after_forward}
        for block in blocks:
            fully_shard(block, **kwargs)
        if getattr(module, "owns_backward", False):
            # The objective runs backward passes inside its step (GradCache): a root unit around the step would be
            # resharded by the first of them. Each child holding parameters (the backbone) is a root of its own
            # forward instead; the objective's direct parameters (e.g. a learned temperature) stay replicated and
            # the loop averages their gradients (engine.loop._sync_manual_grads).
            for child in module.children():
                if any(True for _ in child.parameters()) and not isinstance(child, FSDPModule):
                    fully_shard(child, **kwargs)
            root = module
        else:
            root = ShardedRoot(module)
            fully_shard(root, **kwargs)
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        log.info("fsdp2: %d blocks + the root sharded over %d ranks (%s precision policy, %s trainable parameters)",
                 len(blocks), mesh.size(), "bf16" if policy.param_dtype == torch.bfloat16 else "fp32",
                 f"{trainable:,}")
        return root

    return parallelize


def is_sharded(module: nn.Module) -> bool:
    """True when ``module`` (the objective) holds FSDP2-sharded (DTensor) parameters."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def local_norm(norm: torch.Tensor) -> torch.Tensor:
    """A gradient norm as a plain tensor (``clip_grad_norm_`` returns a DTensor for sharded gradients)."""
    from torch.distributed.tensor import DTensor

    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def full_state_dict(module: nn.Module, trainable_only: bool = True) -> dict[str, torch.Tensor]:
    """Collective: every (trainable) parameter of a sharded ``module`` gathered as a full CPU tensor on rank 0,
    keyed by ``module.named_parameters()``; other ranks get ``{}``."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    out: dict[str, torch.Tensor] = {}
    rank = dist.get_rank() if dist.is_initialized() else 0
    for name, param in module.named_parameters():
        if trainable_only and not param.requires_grad:
            continue
        full = param.detach().full_tensor() if isinstance(param, DTensor) else param.detach()
        if rank == 0:
            out[name] = full.to("cpu").clone()
    return out
