"""log pi(y|x) of token-id sequences by teacher forcing: the one implementation HyPO, the KL diagnostic and the
benchmarks use.

Inputs are token ids, never text: ``prompts[i]`` the ids the model continued and ``completions[i]`` the ids it
generated (EOS included when it was generated), exactly as the generation backends return them and the rollouts
store them. Re-tokenising decoded text would score a different sequence (merges change, EOS is lost), which biases
every quantity built on it.

For a row with prompt x (length P) and completion y (length C), one forward pass over ``x + y`` gives logits at
positions 0..P+C-1; position P-1+t predicts y_t, so

    log pi(y | x) = sum_{t=0}^{C-1} [ logit_{P-1+t}(y_t) - logsumexp(logit_{P-1+t}) ].

The logsumexp form avoids a (N, T, V) log_softmax copy (the vocabulary is the large axis). Rows are right-padded and
masked, so padding never enters a sum; positions start at 0 for every row, as in an unpadded forward pass. Logits
are promoted to at least float32 before the sums (a float64 model keeps float64).
"""

from __future__ import annotations

from typing import Sequence

import torch


def _batch(prompts, completions, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    seqs = [list(p) + list(y) for p, y in zip(prompts, completions)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    comp = torch.zeros_like(ids, dtype=torch.bool)  # True where the token is a completion token
    for i, (s, p) in enumerate(zip(seqs, prompts)):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        attn[i, :len(s)] = 1
        comp[i, len(p):len(s)] = True
    return ids.to(device), attn.to(device), comp.to(device)


def token_logps(model, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the completion tokens, ``(N, T-1)``, and the mask of completion positions.

    Differentiable when grad is enabled. Every prompt needs at least one token (the first completion token is
    predicted from the last prompt position).
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token: the first completion token is predicted from it")
    device = next(model.parameters()).device
    ids, attn, comp = _batch(prompts, completions, pad_id, device)
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1]  # (N, T-1, V)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    target = ids[:, 1:]  # (N, T-1): position t predicts token t+1
    lp = logits.gather(-1, target[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # (N, T-1)
    mask = comp[:, 1:]  # (N, T-1)
    return lp * mask, mask


def sequence_logps(model, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int,
                   batch_size: int | None = None) -> torch.Tensor:
    """``log pi(y_i | x_i)`` for every row, ``(N,)``. One forward pass per ``batch_size`` rows (all at once if None).

    Differentiable when grad is enabled (HyPO calls it with grad, the diagnostics under ``torch.no_grad``).
    """
    n = len(prompts)
    if n == 0:
        return torch.zeros(0)
    step = batch_size or n
    out = []
    for i in range(0, n, step):
        lp, _ = token_logps(model, prompts[i:i + step], completions[i:i + step], pad_id)
        out.append(lp.sum(dim=-1))  # (b,)
    return torch.cat(out)
