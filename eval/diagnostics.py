"""Policy diagnostics: the reverse KL(pi_theta || pi_ref) on held-out prompts, estimated from samples of pi_theta.

KL(pi_theta || pi_ref) = E_{x, y ~ pi_theta(.|x)} [log pi_theta(y|x) - log pi_ref(y|x)], the quantity HyPO regularises
and the key diagnostic of Song et al. 2024. Both log-probabilities are computed here by teacher forcing on the same
token ids (the completion re-tokenised once), so the two terms are comparable; the samples themselves come from the
evaluation's generations. With sampling temperature != 1 the samples are not exactly from pi_theta and the estimate
is biased (the result records the temperature).
"""

from __future__ import annotations

import torch


@torch.no_grad()
def sequence_logprobs(model_path: str, texts: list[str], completions: list[str], batch_size: int = 8) -> list[float]:
    """sum_t log p(y_t | x, y_<t) for each (rendered prompt, completion) under the model at ``model_path``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[float] = []
    for i in range(0, len(texts), batch_size):
        seqs, starts = [], []
        for x, y in zip(texts[i:i + batch_size], completions[i:i + batch_size]):
            p = tok(x, add_special_tokens=False)["input_ids"]
            c = tok(y, add_special_tokens=False)["input_ids"]
            seqs.append(p + c)
            starts.append(len(p))
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for j, s in enumerate(seqs):
            ids[j, :len(s)] = torch.tensor(s)
            attn[j, :len(s)] = 1
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits[:, :-1].float(), -1)  # (N, T-1, V)
        tok_lp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)  # (N, T-1)
        for j, (s, st) in enumerate(zip(seqs, starts)):
            out.append(float(tok_lp[j, st - 1:len(s) - 1].sum()))
    return out


def reverse_kl(policy_path: str, ref_path: str, texts: list[str], completions: list[str]) -> dict:
    pol = sequence_logprobs(policy_path, texts, completions)
    ref = sequence_logprobs(ref_path, texts, completions)
    diffs = [a - b for a, b in zip(pol, ref)]
    n = len(diffs)
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / max(1, n - 1)
    return {"kl": mean, "kl_stderr": (var / n) ** 0.5, "samples": n}
