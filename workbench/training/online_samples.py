"""Samples from the *current* policy during training (HyPO's online term): HF ``generate`` or vLLM with weight sync.

Both samplers take prompt token ids and return, per prompt, ``k`` completion token-id lists (EOS included when the
sample stopped). Log-probs are recomputed by the trainer under the policy (with grad) and the reference, so the
sampler's own numbers never enter the loss.

* ``hf``: ``model.generate`` on the training model itself: always exactly on-policy.
* ``vllm``: a colocated ``vllm.LLM``; the policy's weights (LoRA merged in) are pushed into it every ``sync_every``
  optimizer steps, so samples are at most ``sync_every - 1`` steps stale. On CPU, vLLM repacks Linear weights and
  drops the originals, which breaks ``load_weights``; :func:`workbench.generation.vllm_cpu.keep_cpu_linear_weights`
  is applied first (CPU only).
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
        self._synced_at: int | None = None
        self.syncs = 0

    def _vllm_model(self):
        return self.backend.llm.llm_engine.model_executor.driver_worker.model_runner.model

    @torch.no_grad()
    def sync_weights(self, model) -> None:
        """Push the policy's weights into vLLM (PEFT: merge, push base weights, unmerge)."""
        target = self._vllm_model()
        peft = hasattr(model, "peft_config") and hasattr(model, "merge_adapter")
        if peft:
            model.merge_adapter()
        try:
            for name, param in model.named_parameters():
                if peft:
                    if "lora_" in name or "original_module" in name:
                        continue
                    name = name.removeprefix("base_model.model.").replace(".base_layer", "").replace(
                        "modules_to_save.default.", "")
                target.load_weights([(name, param.data)])
        finally:
            if peft:
                model.unmerge_adapter()
        self.backend.llm.reset_prefix_cache()
        self.syncs += 1

    def sample(self, model, prompts: list[list[int]], step: int) -> list[list[list[int]]]:
        from vllm import SamplingParams

        if self._synced_at is None or step - self._synced_at >= self.sync_every:
            self.sync_weights(model)
            self._synced_at = step
        params = SamplingParams(n=self.k, temperature=self.temperature, top_p=1.0, max_tokens=self.max_new_tokens)
        outs = self.backend.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [[list(c.token_ids) or [0] for c in sorted(o.outputs, key=lambda c: c.index)] for o in outs]
