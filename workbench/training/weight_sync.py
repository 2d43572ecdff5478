"""The policy's full weights, as vLLM wants them: sharded parameters gathered, LoRA merged *out of place*.

Two mistakes this module exists to avoid:

* **Pushing shards.** Under DeepSpeed ZeRO-3 a parameter is a flat shard (``ds_id``; its ``.data`` is empty), under
  FSDP1 a flat parameter, under FSDP2 a ``DTensor`` holding this rank's rows. vLLM needs each whole tensor, so
  :func:`gathered` makes every rank join the gather (a collective: all ranks must call it, in the same order) and
  the weights are read while they are whole.
* **Touching the reference.** With LoRA, the frozen base *is* pi_ref (the adapter-disabled model). PEFT's
  ``merge_adapter()`` / ``unmerge_adapter()`` writes ``W + BA - BA`` into the base in place; in bf16 that is not
  ``W``: one cycle moved 15% of the entries, 200 cycles moved the weights by 0.67%, so pi_ref drifted with every
  sync. Here the merged weight is a new tensor, ``W + sum_a get_delta_weight(a)`` over the active adapters, and the
  layer is never modified.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

# Name components that wrappers insert (FSDP1, activation checkpointing, torch.compile); DDP adds a leading "module".
_WRAPPERS = {"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod"}


def checkpoint_name(name: str) -> str:
    """``base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight`` -> ``model.layers.0.self_attn.q_proj
    .weight``: the name in the model's own checkpoint, which vLLM's ``load_weights`` maps onto its fused layers."""
    parts = [p for p in name.split(".") if p not in _WRAPPERS]
    while parts and parts[0] == "module":
        parts.pop(0)
    name = ".".join(parts).removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")


@contextlib.contextmanager
def gathered(model: torch.nn.Module):
    """Every parameter of ``model`` whole for the duration (ZeRO-3, FSDP1, FSDP2); a no-op otherwise."""
    params = list(model.parameters())
    if any(hasattr(p, "ds_id") for p in params):  # DeepSpeed ZeRO-3
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP1

    if any(isinstance(m, FSDP1) for m in model.modules()):
        with FSDP1.summon_full_params(model, writeback=False, recurse=True):
            yield
        return
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        FSDPModule = ()
    fsdp2 = [m for m in model.modules() if isinstance(m, FSDPModule)] if FSDPModule else []
    for m in fsdp2:
        m.unshard()
    try:
        yield
    finally:
        for m in fsdp2:
            m.reshard()


def _whole(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


@torch.no_grad()
def policy_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(checkpoint name, tensor)`` for every weight of the policy, LoRA merged in out of place.

    Call inside :func:`gathered` when the model is sharded. The tensors yielded for LoRA layers are new; the others are
    the parameters themselves (detached): copy them before the model changes if you keep them.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged = set()
    for layer_name, layer in model.named_modules():
        if not isinstance(layer, BaseTunerLayer):
            continue
        base = layer.get_base_layer()
        adapters = [a for a in layer.active_adapters if a in getattr(layer, "lora_A", {})]
        for pname, p in base.named_parameters(recurse=False):
            full = f"{layer_name}.base_layer.{pname}" if layer is not base else f"{layer_name}.{pname}"
            merged.add(full)
            w = _whole(p.detach())
            if pname == "weight" and adapters and not layer.merged and not getattr(layer, "disable_adapters", False):
                # Out of place: the frozen base (pi_ref) is never written. Summed in at least fp32 and rounded once
                # (PEFT keeps adapters in fp32; rounding the delta to bf16 first would round twice).
                acc = torch.promote_types(w.dtype, torch.float32)
                w = (w.to(acc) + sum(_whole(layer.get_delta_weight(a)).to(acc) for a in adapters)).to(w.dtype)
            yield checkpoint_name(full), w
    for name, p in model.named_parameters():
        if name in merged or "lora_" in name or ".original_module." in name:
            continue
        yield checkpoint_name(name), _whole(p.detach())


def buckets(named: Iterator[tuple[str, torch.Tensor]], max_bytes: int = 256 * 2**20):
    """Group ``(name, tensor)`` pairs into lists of at most ``max_bytes`` (a tensor larger than that travels alone),
    moved to CPU: one RPC message per bucket bounds the memory a sync needs on both sides."""
    bucket, size = [], 0
    for name, t in named:
        n = t.numel() * t.element_size()
        if bucket and size + n > max_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, t.to("cpu", copy=True).contiguous()))
        size += n
    if bucket:
        yield bucket
