"""Samples from the *current* policy during training (HyPO's online term): HF ``generate`` or vLLM with weight sync.

Both samplers take prompt token ids and return, per prompt, ``k`` completion token-id lists (EOS included when the
sample stopped). Log-probs are recomputed by the trainer under the policy (with grad) and the reference, so the
sampler's own numbers never enter the loss.

* ``hf``: ``model.generate`` on the training model itself, with a generation config that keeps only the special
  tokens (:func:`workbench.generation.backends.plain_generation`): a model that ships ``repetition_penalty``,
  ``no_repeat_ngram_size``, ``min_length``, ``bad_words_ids`` or a ``top_k`` in its generation_config is still
  sampled from pi itself. Always exactly on-policy.
* ``vllm``: a colocated ``vllm.LLM`` (in this process or its own: the weights go through ``collective_rpc``, see
  :meth:`VLLMSampler.sync_weights`), pushed every ``sync_every`` optimizer steps. On CPU, vLLM repacks Linear weights
  and drops the originals, which breaks ``load_weights``; :func:`workbench.generation.vllm_cpu.keep_cpu_linear_weights`
  is applied first, in the engine's process too (CPU only).

**What ``sync_every`` costs.** The estimator of Eq. 1 (:mod:`workbench.losses.hypo`) is unbiased only for samples from
the current pi_theta. With ``sync_every = s > 1``, the samples of step t come from the weights of step
``s * floor(t / s)``, up to ``s - 1`` optimizer steps old: the term then estimates the score-function gradient under
that older policy, a bias that grows with the learning rate and with ``s`` and that nothing here corrects (no
importance weights). That is why the default is ``sync_every: 1`` (a push before every step's samples); larger values
trade that bias for sync time, and the trainer says so when it starts. Even at 1, vLLM's kernels (and a bf16 engine)
give slightly different probabilities than the trainer's forward pass; ``workbench eval reasoning`` reports that gap
as ``sampler_logprob_gap``.

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

from workbench.generation.backends import plain_generation


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
            # Only the special tokens survive from the model's own generation_config: no penalty, no n-gram ban,
            # no minimum length, no top-k. Temperature, top_p=1 and top_k=0 are the only shaping.
            with plain_generation(model, do_sample=True, temperature=self.temperature, top_p=1.0, top_k=0,
                                  max_new_tokens=self.max_new_tokens, num_return_sequences=self.k,
                                  pad_token_id=pad) as gen_cfg:
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg)
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


class SyncedSampler:
    """What the vLLM samplers share: when to push weights, and each request's seed.

    The weights are pushed on the first call and whenever ``step // sync_every`` moves on (a schedule fixed by the
    step, so a resumed run pushes at the same steps). Gradient accumulation calls ``sample`` several times per
    optimizer step: the micro-batch index keeps their seeds apart (a resume starts at a step boundary, so it counts the
    same way); so does the rank. Subclasses set ``seed`` and ``sync_every`` and define ``sync_weights(model)``."""

    seed: int
    sync_every: int
    _synced_at: int | None = None
    _step: int | None = None
    _micro: int = 0

    def request_seeds(self, model, n_prompts: int, step: int) -> list[int]:
        """Sync if the schedule says so, then one seed per prompt: ``derive_seed(seed, step, micro, rank, i)``."""
        from workbench.generation.backends import derive_seed

        if self._synced_at is None or step // self.sync_every > self._synced_at // self.sync_every:
            self.sync_weights(model)
            self._synced_at = step
        self._micro = self._micro + 1 if step == self._step else 0
        self._step = step
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        return [derive_seed(self.seed, step, self._micro, rank, i) for i in range(n_prompts)]


class VLLMSampler(SyncedSampler):
    name = "vllm"

    def __init__(self, model_path: str, k: int, temperature: float, max_new_tokens: int, sync_every: int,
                 backend_cfg, seed: int = 0):
        from workbench.generation.backends import VLLMBackend, _on_cpu

        if _on_cpu():
            from workbench.generation.vllm_cpu import keep_cpu_linear_weights

            keep_cpu_linear_weights()
        self.backend = VLLMBackend(model_path, backend_cfg, seed=seed, weight_sync=True)
        self.k, self.temperature, self.max_new_tokens, self.sync_every = k, temperature, max_new_tokens, sync_every
        self.seed = seed
        self._synced_at: int | None = None
        self._step, self._micro = None, 0  # the optimizer step of the last call, and calls within it
        self.syncs = 0

    def close(self) -> None:
        self.backend.close()

    @torch.no_grad()
    def sync_weights(self, model) -> None:
        """Push the policy's full weights into every vLLM worker (:mod:`workbench.training.weight_sync`: sharded
        parameters gathered, LoRA merged out of place so the frozen base, pi_ref, is never written).

        Through ``LLM.collective_rpc`` and the worker extension (:mod:`workbench.generation.vllm_worker`), so it works
        with the engine in this process or in its own (as on a GPU), in buckets of at most 256 MiB. Every rank calls
        it (the gather is a collective); each rank pushes into its own engine."""
        from workbench.training.weight_sync import buckets, gathered, policy_weights

        from safetensors.torch import save

        with gathered(model):
            for bucket in buckets(policy_weights(model)):
                self.backend.llm.collective_rpc("workbench_load_weights", args=(save(dict(bucket)),))
        self.backend.llm.reset_prefix_cache()
        self.syncs += 1

    def sample(self, model, prompts: list[list[int]], step: int) -> list[list[list[int]]]:
        from vllm import SamplingParams

        seeds = self.request_seeds(model, len(prompts), step)
        # One request per prompt, each with its own seed (its k samples are vLLM's child requests seed, seed+1 ...).
        params = [SamplingParams(n=self.k, temperature=self.temperature, top_p=1.0, max_tokens=self.max_new_tokens,
                                 seed=seed) for seed in seeds]
        outs = self.backend.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [[list(c.token_ids) or [0] for c in sorted(o.outputs, key=lambda c: c.index)] for o in outs]
