"""GradCache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup").

A contrastive loss needs every embedding of the batch at once, so its batch is bounded by the
activations memory holds. GradCache splits the gradient along the chain rule,

    dL/dtheta = sum_chunks  (dL/de_chunk)^T  de_chunk/dtheta,

and computes the two factors separately: dL/de on the full embedding matrix (cheap: B x H), then
de_chunk/dtheta one chunk at a time. Only one chunk's activations are alive at any moment, yet the
loss -- and so the set of negatives -- is the full batch's (RELIABILITY 13: accumulation must not
change the negatives).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch.utils.checkpoint import get_device_states, set_device_states

Inputs = Mapping[str, Any]
Encoder = Callable[[Inputs], torch.Tensor]


def cached_info_nce_backward(
    encode_q: Encoder,
    encode_d: Encoder,
    q_inputs: Inputs,
    d_inputs: Inputs,
    *,
    chunk_size: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    no_sync: Callable[[], AbstractContextManager] | None = None,
) -> torch.Tensor:
    """Compute ``loss_fn(encode_q(q_inputs), encode_d(d_inputs))`` and backpropagate it chunk by chunk.

    1. Embed the queries, then the documents, ``chunk_size`` rows at a time under ``no_grad``,
       snapshotting the RNG state (CPU and the chunk's CUDA devices) before each chunk.
    2. ``L = loss_fn(Q, D)`` on leaf copies of the full matrices; ``L.backward()`` gives the cache
       G_Q = dL/dQ, G_D = dL/dD (and the gradient of any parameter of ``loss_fn`` itself, e.g. a
       learnable temperature).
    3. Re-embed each chunk with gradients under its saved RNG state -- dropout draws the same masks,
       so the chunk's embeddings are the ones G was computed for -- and call
       ``e_chunk.backward(G_chunk)``, accumulating dL/dtheta into the parameters' ``.grad``.

    The accumulated gradients equal those of the non-cached loss computed with the same chunked
    forward passes (the same dropout draws); in eval mode, those of a single full-batch forward.

    ``encode_q`` / ``encode_d`` map an input chunk -- ``q_inputs`` / ``d_inputs`` with every tensor
    sliced on dim 0 (other values passed unchanged) -- to embeddings [rows, H]; they may be the
    same model. For hard negatives pass the documents as positives followed by negatives and let
    ``loss_fn`` split them, e.g. ``lambda q, d: info_nce(q, d[:B], hard_negatives=d[B:])``.
    Gradients add to existing ``.grad`` as a normal ``backward()`` does; scale inside ``loss_fn``
    for gradient accumulation. ``no_sync``, when given (e.g. ``model.no_sync`` under DDP), wraps
    every chunk's backward but the last, so gradients are all-reduced once.

    Returns the loss value, detached.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    sides = [(encode_q, _chunks(q_inputs, chunk_size, "q_inputs")), (encode_d, _chunks(d_inputs, chunk_size, "d_inputs"))]

    # (1) embeddings without activations, remembering each chunk's randomness
    states: list[list[_RngState]] = []
    embeddings: list[torch.Tensor] = []
    with torch.no_grad():
        for encode, chunks in sides:
            side_states, side_embeddings = [], []
            for chunk in chunks:
                side_states.append(_RngState(chunk))
                side_embeddings.append(encode(chunk))
            states.append(side_states)
            embeddings.append(torch.cat(side_embeddings, dim=0))

    # (2) the full-batch loss and its gradient w.r.t. every embedding
    leaves = [e.detach().requires_grad_() for e in embeddings]
    with torch.enable_grad():
        loss = loss_fn(*leaves)
    loss.backward()
    for name, leaf in zip(("query", "document"), leaves):
        if leaf.grad is None:
            raise ValueError(f"loss_fn did not use the {name} embeddings: they received no gradient")

    # (3) replay each chunk with gradients and push the cached embedding gradient through it
    jobs = [(encode, chunk, state, grad)
            for (encode, chunks), side_states, leaf in zip(sides, states, leaves)
            for chunk, state, grad in zip(chunks, side_states, leaf.grad.split(chunk_size, dim=0))]
    for index, (encode, chunk, state, grad) in enumerate(jobs):
        last = index == len(jobs) - 1
        with nullcontext() if no_sync is None or last else no_sync():
            with state.replay(), torch.enable_grad():
                chunk_embeddings = encode(chunk)
            chunk_embeddings.backward(grad)
    return loss.detach()


def _chunks(inputs: Inputs, chunk_size: int, name: str) -> list[dict[str, Any]]:
    """Slice every tensor of ``inputs`` on dim 0 into consecutive chunks of ``chunk_size`` rows."""
    rows = {key: value.shape[0] for key, value in inputs.items() if isinstance(value, torch.Tensor) and value.dim() > 0}
    if not rows:
        raise ValueError(f"{name} holds no tensor to split into chunks")
    if len(set(rows.values())) != 1:
        raise ValueError(f"{name}: tensors disagree on the batch size (dim 0): {rows}")
    n = next(iter(rows.values()))
    return [_trim_padding({key: value[start : start + chunk_size] if key in rows else value
                           for key, value in inputs.items()})
            for start in range(0, n, chunk_size)]


def _trim_padding(chunk: dict[str, Any]) -> dict[str, Any]:
    """Drop the trailing columns that are padding in every row of the chunk (``attention_mask`` all 0).

    The batch is padded to its longest row; a chunk of shorter rows then encodes fewer tokens. Only *trailing*
    columns go: a masked-out suffix changes nothing for the real tokens of a bidirectional encoder (masked) or a
    causal decoder (it comes after them), while dropping leading (left-padding) columns would shift positions.
    """
    mask = chunk.get("attention_mask")
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or mask.shape[1] == 0:
        return chunk
    width = mask.shape[1]
    used = mask.bool().any(0)
    keep = int(used.nonzero().max()) + 1 if bool(used.any()) else 1
    if keep == width:
        return chunk
    return {key: value[:, :keep] if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[1] == width
            else value for key, value in chunk.items()}


class _RngState:
    """The CPU RNG and the RNG of every CUDA device holding one of the chunk's tensors, at creation."""

    def __init__(self, chunk: Inputs) -> None:
        tensors = [v for v in chunk.values() if isinstance(v, torch.Tensor)]
        self.cpu = torch.get_rng_state()
        self.devices, self.device_states = get_device_states(*tensors)

    @contextmanager
    def replay(self) -> Iterator[None]:
        """Run a block under the saved state; the global RNG is restored afterwards (the replay consumes nothing)."""
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu)
            set_device_states(self.devices, self.device_states)
            yield
