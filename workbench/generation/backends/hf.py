"""The ``hf`` backend: transformers ``generate``, batched with left padding, float32 on CPU."""

from __future__ import annotations

import contextlib
from typing import Sequence

from workbench.generation.backends.base import (BackendConfig, Completion, SamplingConfig, _on_cpu, derive_seed,
                                                register_backend, render_prompts, tokenize_prompts)


@contextlib.contextmanager
def plain_generation(model, **settings):
    """Yield a ``GenerationConfig`` of exactly ``settings`` (plus the model's special-token ids) under which ``generate``
    samples the model's own distribution: none of the processors a model may ship in its generation_config
    (repetition_penalty, no_repeat_ngram_size, min_length, bad_words_ids, suppress_tokens, top_k ...).

    Passing a config is not enough: ``generate`` fills every field the passed config leaves unset (None) from
    ``model.generation_config`` (transformers' ``_prepare_generation_config``), so a shipped ``repetition_penalty``
    would come back. For the duration, the generating model's own config is replaced by one that holds only the
    special tokens, then restored; the global defaults that fill the rest are all neutral but ``top_k=50``, which a
    sampling caller sets to 0.
    """
    from transformers import GenerationConfig

    target = model
    while hasattr(target, "get_base_model"):  # PEFT: the wrapped transformers model is the one that generates
        target = target.get_base_model()
    own = target.generation_config
    special = {k: getattr(own, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id",
                                                   "decoder_start_token_id")}
    special = {k: v for k, v in special.items() if v is not None}
    target.generation_config = GenerationConfig(**special)
    try:
        yield GenerationConfig(**{**special, **settings})
    finally:
        target.generation_config = own


def first_stop(tokenizer, ids: list[int], stops: Sequence[str]) -> int | None:
    """The length of the shortest prefix of ``ids`` whose text contains a stop string (None: no stop string).

    "Contains" is monotone in the prefix length, so a bisection needs O(log T) decodes.
    """
    def hit(n: int) -> bool:
        text = tokenizer.decode(ids[:n], skip_special_tokens=True)
        return any(s in text for s in stops)

    if not stops or not hit(len(ids)):
        return None
    lo, hi = 1, len(ids)  # hit(hi) holds
    while lo < hi:
        mid = (lo + hi) // 2
        if hit(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


@register_backend("hf")
class HFBackend:

    def __init__(self, model_path: str, cfg: BackendConfig, seed: int = 0, model_name: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg, self.seed = cfg, seed
        dtype = torch.float32 if (cfg.dtype == "auto" and _on_cpu()) else (
            torch.bfloat16 if cfg.dtype == "auto" else getattr(torch, cfg.dtype))
        self._tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
        self._tok.padding_side = "left"
        if self._tok.pad_token is None:
            self._tok.pad_token = self._tok.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype,
                                                          trust_remote_code=cfg.trust_remote_code)
        self.model.eval()
        if not _on_cpu():
            self.model.to("cuda")
        self.model_name = model_name or model_path
        self.max_model_len = cfg.max_model_len or int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.dtype = str(dtype).removeprefix("torch.")
        self._calls = 0

    @property
    def tokenizer(self):
        return self._tok

    def describe(self) -> dict:
        return {"backend": "hf", "dtype": self.dtype, "model": self.model_name, "device": str(self.model.device)}

    def generate(self, prompts: Sequence, sampling: SamplingConfig, seed: int | None = None) -> list[list[Completion]]:
        import torch

        prompt_ids = tokenize_prompts(self._tok, render_prompts(self._tok, prompts))
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self._tok.eos_token_id}
        eos_ids.discard(None)
        pad = self._tok.pad_token_id
        if seed is None:  # no seed from the job: a different but deterministic seed per call
            seed = derive_seed(self.seed, sampling.seed, self._calls)
        self._calls += 1
        result: list[list[Completion]] = []
        for b, start in enumerate(range(0, len(prompt_ids), self.cfg.batch_size)):
            batch = prompt_ids[start:start + self.cfg.batch_size]
            width = max(len(p) for p in batch)
            device = self.model.device
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, p in enumerate(batch):  # left padding: every row continues from its own last prompt token
                ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
                mask[i, width - len(p):] = 1
            enc = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
            torch.manual_seed(derive_seed(seed, b))
            if sampling.temperature > 0:
                settings = dict(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0,
                                num_return_sequences=sampling.n)
            else:
                # Greedy allows no num_return_sequences > 1: repeat each prompt n times instead (same row layout).
                settings = dict(do_sample=False, num_return_sequences=1)
                enc = {k: v.repeat_interleave(sampling.n, dim=0) for k, v in enc.items()}
            settings.update(max_new_tokens=sampling.max_tokens, pad_token_id=pad, output_logits=True,
                            return_dict_in_generate=True)
            extra = {}
            if sampling.stop:  # only to stop early: where y ends is decided below, the same way for every row
                from transformers import StopStringCriteria, StoppingCriteriaList

                extra["stopping_criteria"] = StoppingCriteriaList([StopStringCriteria(self._tok, sampling.stop)])
            with torch.no_grad(), plain_generation(self.model, **settings) as gen_cfg:
                out = self.model.generate(**enc, generation_config=gen_cfg, **extra)
            gen = out.sequences[:, width:]  # (B*n, T)
            logits = torch.stack(out.logits, dim=1).float()  # (B*n, T, V) raw, before temperature/top-p
            token_lp = torch.log_softmax(logits, dim=-1).gather(-1, gen.unsqueeze(-1)).squeeze(-1)  # (B*n, T)
            for i, p in enumerate(batch):
                samples = []
                for j in range(sampling.n):
                    row = i * sampling.n + j
                    seq = gen[row].tolist()
                    # y ends at its first EOS (kept) or where its text first holds a stop string (the tokens up to
                    # there, as vLLM keeps them); anything after is padding generate added, not part of y.
                    length, finish = len(seq), "length"
                    for t, tid in enumerate(seq):
                        if tid in eos_ids:
                            length, finish = t + 1, "stop"
                            break
                    stop_at = first_stop(self._tok, seq[:length], sampling.stop)
                    if stop_at is not None:
                        length, finish = stop_at, "stop"
                    text = self._tok.decode(seq[:length], skip_special_tokens=True)
                    for s in sampling.stop:
                        if s in text:
                            text = text[:text.find(s)]
                    samples.append(Completion(text, seq[:length], finish, float(token_lp[row, :length].sum()), list(p)))
                result.append(samples)
        return result
