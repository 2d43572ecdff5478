"""Policy diagnostics: the reverse KL(pi || pi_ref) on held-out prompts, exactly as defined.

    KL(pi || pi_ref) = E_x E_{y ~ pi(.|x)} [ log pi(y|x) - log pi_ref(y|x) ]

The estimate is unbiased only when three things hold, and the reasoning eval makes sure they do:

1. **y is drawn from pi itself**: temperature 1, top_p 1, no top_k, no repetition penalty or any other processor a
   model's generation_config may ship, and in the dtype that is scored (float32). When the accuracy samples were
   drawn otherwise (T=0.7, say), the eval runs a dedicated KL sampling pass.
2. **Both log-probs score the generated token ids**, EOS included when generated (:mod:`workbench.logprobs`), never
   text decoded and re-tokenised (that scores another sequence and drops EOS, whose probability is part of pi(y|x)).
3. **A sample that hit max_tokens** is scored on the tokens it has: the estimate is then of the KL between the two
   models' distributions over outputs truncated at max_tokens, the same truncation for both. The eval records
   ``max_tokens`` and how many samples were truncated.

Standard error. The prompts are the fixed eval set and each prompt has n i.i.d. samples, so the estimator is
(1/P) sum_x mean_j d_xj with d = log pi - log pi_ref, and its variance is (1/P^2) sum_x Var_x(d) / n. We estimate
Var_x by each prompt's sample variance (n >= 2; with n = 1 the pooled variance over all samples, which also counts
between-prompt spread and so over-states the error). ``kl_per_token`` is sum(d) / sum(tokens): the KL per generated
token, a ratio estimator.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

import torch


@torch.no_grad()
def score_logps(model_path: str, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                batch_size: int = 8) -> list[float]:
    """log pi(y|x) of each (prompt ids, completion ids) row under the model at ``model_path``, in float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workbench.logprobs import sequence_logps

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    return sequence_logps(model, prompts, completions, pad, batch_size=batch_size).tolist()


def kl_estimate(policy_logps: Sequence[float], ref_logps: Sequence[float], prompt_ids: Sequence[str],
                num_tokens: Sequence[int]) -> dict:
    """The KL estimate, its standard error and the per-token KL from per-sample log-probs (see the docstring)."""
    d = [a - b for a, b in zip(policy_logps, ref_logps)]
    n = len(d)
    if n == 0:
        raise ValueError("no samples to estimate the KL from")
    by_prompt: dict[str, list[float]] = defaultdict(list)
    for pid, v in zip(prompt_ids, d):
        by_prompt[pid].append(v)
    sizes = {len(v) for v in by_prompt.values()}
    kl = sum(sum(v) / len(v) for v in by_prompt.values()) / len(by_prompt)  # mean over prompts of per-prompt means
    if min(sizes) >= 2:
        var_sum = sum(_var(v) / len(v) for v in by_prompt.values())
        se, how = math.sqrt(var_sum) / len(by_prompt), "within-prompt"
    else:
        se, how = math.sqrt(_var(d) / n) if n > 1 else float("nan"), "pooled"
    tokens = sum(num_tokens)
    return {"kl": kl, "kl_se": se, "se_method": how, "samples": n, "prompts": len(by_prompt),
            "per_prompt": {pid: sum(v) / len(v) for pid, v in by_prompt.items()},  # for paired comparisons
            "kl_per_token": sum(d) / tokens if tokens else float("nan"), "tokens": tokens}


def _var(v: Sequence[float]) -> float:
    m = sum(v) / len(v)
    return sum((x - m) ** 2 for x in v) / (len(v) - 1)


def reverse_kl(policy_path: str, ref_path: str, prompts: Sequence[Sequence[int]],
               completions: Sequence[Sequence[int]], prompt_ids: Sequence[str]) -> dict:
    """KL(pi || pi_ref) from samples of pi given as token ids (see the module docstring for what must hold)."""
    pol = score_logps(policy_path, prompts, completions)
    ref = score_logps(ref_path, prompts, completions)
    out = kl_estimate(pol, ref, prompt_ids, [len(c) for c in completions])
    out["policy_logps"], out["ref_logps"] = pol, ref
    return out
