"""Samples from the *current* policy during training (HyPO's online term): HF ``generate`` or vLLM with weight sync.

Both samplers take prompt token ids and return, per prompt, ``k`` completion token-id lists (EOS included when the
sample stopped). Log-probs are recomputed by the trainer under the policy (with grad) and the reference, so the
sampler's own numbers never enter the loss.

* ``hf``: ``model.generate`` on the training model itself: always exactly on-policy.
* ``vllm``: a colocated ``vllm.LLM``; the policy's weights (LoRA merged in) are pushed into it every ``sync_every``
  optimizer steps, so samples are at most ``sync_every - 1`` steps stale. On CPU, vLLM repacks Linear weights and
  drops the originals, which breaks ``load_weights``; :func:`workbench.generation.vllm_cpu.keep_cpu_linear_weights`
  is applied first (CPU only).

**Reproducible across a resume.** A run resumed from checkpoint N must draw, from step N on, exactly what the
uninterrupted run drew. ``hf`` samples with the global torch generator, which the trainer restores from the
checkpoint (``rng_state.pth``), so it does. vLLM's engine keeps its own generator, which no checkpoint holds, so
``vllm`` gives every request its own seed, ``derive_seed(seed, step, micro-batch, rank, prompt index)``: the samples
depend on the policy, the step and the prompt's place only, not on what the engine drew before (nor on which other
requests share its batch). The weights are pushed on the first call and whenever ``step // sync_every`` moves on, a
schedule fixed by the step: a run resumed at a multiple of ``sync_every`` (make ``optim.save_steps`` one) pushes the
same weights at the same steps as the uninterrupted run; resumed elsewhere it pushes the checkpoint's weights
``step mod sync_every`` steps earlier than the uninterrupted run did.
"""

from __future__ import annotations

import torch


def _eos_ids(tokenizer, model) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, list) else ([eos] if eos is not None else []))
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


class HFSampler:
    name = "hf"

    def __init__(self, tokenizer, k: int, temperature: float, max_new_tokens: int):
        self.tokenizer, self.k, self.temperature, self.max_new_tokens = tokenizer, k, temperature, max_new_tokens

    @torch.no_grad()
    def sample(self, model, prompts: list[list[int]], step: int) -> list[list[list[int]]]:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        width = max(len(p) for p in prompts)
        device = next(model.parameters()).device
        ids = torch.full((len(prompts), width), pad, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding, so every row continues from its last prompt token
            ids[i, width - len(p):] = torch.tensor(p, device=device)
            mask[i, width - len(p):] = 1
        was_training = model.training
        model.eval()
        try:
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=self.temperature,
                                 top_p=1.0, top_k=0, max_new_tokens=self.max_new_tokens, num_return_sequences=self.k,
                                 pad_token_id=pad)
        finally:
            model.train(was_training)
        gen = out[:, width:].tolist()
        eos = _eos_ids(self.tokenizer, model)
        result = []
        for i in range(len(prompts)):
            rows = []
            for j in range(self.k):
                seq = gen[i * self.k + j]
                cut = next((t + 1 for t, tok in enumerate(seq) if tok in eos), len(seq))
                rows.append(seq[:cut] or [pad])
            result.append(rows)
        return result


class VLLMSampler:
    name = "vllm"

    def __init__(self, model_path: str, k: int, temperature: float, max_new_tokens: int, sync_every: int,
                 backend_cfg, seed: int = 0):
        from workbench.generation.backends import VLLMBackend, _on_cpu

        if _on_cpu():
            from workbench.generation.vllm_cpu import keep_cpu_linear_weights

            keep_cpu_linear_weights()
        self.backend = VLLMBackend(model_path, backend_cfg, seed=seed)
        self.k, self.temperature, self.max_new_tokens, self.sync_every = k, temperature, max_new_tokens, sync_every
        self.seed = seed
        self._synced_at: int | None = None
        self._step, self._micro = None, 0  # the optimizer step of the last call, and calls within it
        self.syncs = 0

    def _vllm_model(self):
        return self.backend.llm.llm_engine.model_executor.driver_worker.model_runner.model

    @torch.no_grad()
    def sync_weights(self, model) -> None:
        """Push the policy's weights into vLLM; with PEFT, each LoRA layer's merged weight ``W + scale * B @ A``.

        The merge is PEFT's own, one layer at a time and out of place (``safe_merge`` builds a new tensor), and the
        layer's original tensor is put back after the push. Merging in place and unmerging (``W + d - d``) would leave
        rounding error in the base weights at every sync: the policy would drift with the number of syncs, and a run
        resumed from a checkpoint (fewer syncs behind it) would no longer match the uninterrupted one."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        def vllm_name(name: str) -> str:
            return name.removeprefix("base_model.model.").replace(".base_layer", "").replace(
                "modules_to_save.default.", "")

        target = self._vllm_model()
        pushed = set()
        for layer_name, layer in model.named_modules():
            if not isinstance(layer, BaseTunerLayer) or layer.merged:
                continue
            base = layer.get_base_layer()
            originals = {n: p.data for n, p in base.named_parameters(recurse=False)}
            layer.merge(safe_merge=True)  # new tensors: W + delta
            try:
                for n, p in base.named_parameters(recurse=False):
                    target.load_weights([(vllm_name(f"{layer_name}.base_layer.{n}"), p.data)])
                    pushed.add(f"{layer_name}.base_layer.{n}")
            finally:
                for n, p in base.named_parameters(recurse=False):
                    p.data = originals[n]
                layer.merged_adapters.clear()
        for name, param in model.named_parameters():
            if name in pushed or "lora_" in name or "original_module" in name:
                continue
            target.load_weights([(vllm_name(name), param.data)])
        self.backend.llm.reset_prefix_cache()
        self.syncs += 1

    def sample(self, model, prompts: list[list[int]], step: int) -> list[list[list[int]]]:
        from vllm import SamplingParams

        from workbench.generation.backends import derive_seed

        if self._synced_at is None or step // self.sync_every > self._synced_at // self.sync_every:
            self.sync_weights(model)
            self._synced_at = step
        # Gradient accumulation calls this several times per optimizer step: the micro-batch index keeps their
        # seeds apart (a resume starts at a step boundary, so it counts the same way); so does the rank.
        self._micro = self._micro + 1 if step == self._step else 0
        self._step = step
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        # One request per prompt, each with its own seed (its k samples are vLLM's child requests seed, seed+1 ...).
        params = [SamplingParams(n=self.k, temperature=self.temperature, top_p=1.0, max_tokens=self.max_new_tokens,
                                 seed=derive_seed(self.seed, step, self._micro, rank, i)) for i in range(len(prompts))]
        outs = self.backend.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [[list(c.token_ids) or [0] for c in sorted(o.outputs, key=lambda c: c.index)] for o in outs]
