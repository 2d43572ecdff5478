"""HyPO on top of TRL's DPOTrainer: the DPO loss on offline pairs + lambda * reverse KL on online policy samples.

TRL computes the DPO part exactly as for ``method: dpo`` (same loss types, reference handling and metrics); this
subclass only adds the online term of Song et al. 2024 (maths and derivation in :mod:`workbench.losses.hypo`):

1. take the batch's prompts (the chosen half's prompt tokens);
2. draw k completions per prompt from the *current* policy (HF ``generate``, or vLLM synced every N steps);
3. score them under the policy (with grad) and the reference (no grad): summed completion log-probs, (B, k);
4. add ``kl_coef * surrogate`` (``kl_coef`` is the paper's lambda) whose gradient is the RLOO score-function estimator of grad KL(pi_theta || pi_ref).

Logged (next to TRL's DPO metrics): ``kl/online`` (the reverse-KL estimate on the samples), ``hypo/kl_term``,
``hypo/online_tokens`` and ``hypo/gen_time_share`` (the share of step time spent generating).
"""

from __future__ import annotations

import contextlib
import time

import torch
from trl import DPOTrainer

from workbench.logprobs import sequence_logps
from workbench.losses.hypo import reverse_kl_term


def completion_logps(model, prompts: list[list[int]], completions: list[list[list[int]]], pad_id: int
                     ) -> torch.Tensor:
    """Summed log pi(y|x) over completion tokens for B prompts x k completions -> (B, k). Differentiable."""
    k = len(completions[0])
    flat_prompts = [p for p, ys in zip(prompts, completions) for _ in ys]
    flat = [y for ys in completions for y in ys]
    return sequence_logps(model, flat_prompts, flat, pad_id).view(len(prompts), k)  # (B, k)


@contextlib.contextmanager
def sharded_generation(model: torch.nn.Module):
    """HF ``generate`` on an FSDP2-sharded policy (a no-op context otherwise).

    Each wrapped layer gathers its shards in its own forward hook, as in training, and the ranks decode in step
    (``fully_shard`` marks every module it manages ``_is_fsdp_managed_module``, so ``generate`` turns ``synced_gpus``
    on by itself). What breaks is PEFT: its ``generate`` calls the base model's, past the root module's forward hook, so
    the parameters the root FSDP group holds itself (whatever no wrapped submodule owns: with layer-only wrapping, the
    embeddings) would stay shards ("mixed torch.Tensor and DTensor"). The root group alone is gathered for the
    duration. FSDP1 (which would need ``summon_full_params``) is not supported here."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield
        return
    model.unshard()  # the root group only (FSDPModule.unshard does not recurse)
    try:
        yield
    finally:
        model.reshard()


class HyPOTrainer(DPOTrainer):
    def __init__(self, *args, kl_coef: float, sampler, **kwargs):
        super().__init__(*args, **kwargs)
        if kl_coef > 0 and self.precompute_ref_logps and self.ref_model is None and not self._is_peft():
            raise ValueError("HyPO needs reference log-probs on fresh online samples: give a ref_model, use LoRA "
                             "(the adapter-disabled base is the reference), or turn off precompute_ref_log_probs")
        self.kl_coef = kl_coef  # the paper's lambda (recipe: hypo.kl_coef)
        self.sampler = sampler
        self._gen_seconds = 0.0

    def _is_peft(self) -> bool:
        from peft import PeftModel

        return isinstance(self.accelerator.unwrap_model(self.model), PeftModel)

    def _reference_context(self):
        if self.ref_model is not None:
            return contextlib.nullcontext()
        from trl.trainer.utils import use_adapter

        unwrapped = self.accelerator.unwrap_model(self.model)
        return use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)

    @staticmethod
    def batch_prompts(inputs: dict) -> list[list[int]]:
        """The prompt tokens of each pair: the leading tokens before the completion, in the chosen half."""
        half = inputs["input_ids"].shape[0] // 2
        out = []
        for ids, attn, comp in zip(inputs["input_ids"][:half], inputs["attention_mask"][:half],
                                   inputs["completion_mask"][:half]):
            n = int(((attn == 1) & (comp == 0)).cumprod(0).sum())
            out.append(ids[:n].tolist())
        return out

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if self.kl_coef == 0 or not model.training:
            return loss
        dpo_loss, outputs = loss if return_outputs else (loss, None)
        prompts = self.batch_prompts(inputs)
        unwrapped = self.accelerator.unwrap_model(model)
        t0 = time.perf_counter()
        with sharded_generation(unwrapped):  # FSDP2: the root group's weights whole
            samples = self.sampler.sample(unwrapped, prompts, self.state.global_step)  # B x k token lists
        self._gen_seconds += time.perf_counter() - t0
        pad = self.processing_class.pad_token_id
        pad = pad if pad is not None else self.processing_class.eos_token_id
        policy_logps = completion_logps(model, prompts, samples, pad)  # (B, k), with grad
        with torch.no_grad(), self._reference_context():
            ref_model = self.ref_model if self.ref_model is not None else model
            ref_logps = completion_logps(ref_model, prompts, samples, pad)  # (B, k)
        surrogate, kl = reverse_kl_term(policy_logps, ref_logps)
        total = dpo_loss + self.kl_coef * surrogate
        metrics = self._metrics["train"]
        metrics["kl/online"].append(self.accelerator.gather_for_metrics(kl.detach()).mean().item())
        metrics["hypo/kl_term"].append((self.kl_coef * kl).item())
        metrics["hypo/online_tokens"].append(float(sum(len(y) for ys in samples for y in ys)))
        return (total, outputs) if return_outputs else total

    def training_step(self, *args, **kwargs):
        t0 = time.perf_counter()
        self._gen_seconds = 0.0
        out = super().training_step(*args, **kwargs)
        if self.kl_coef > 0:
            self._metrics["train"]["hypo/gen_time_share"].append(self._gen_seconds / (time.perf_counter() - t0))
        return out
