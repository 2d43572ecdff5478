"""Exact quantities on the toy model (workbench.tiny_models.build_toy_llama) by enumerating every completion.

The toy has 6 tokens; a completion ends at EOS (id 1) or after MAX_TOKENS tokens, so there are 1 + 5 + 150 = 156
completions of up to 3 tokens. Everything here is computed with one unbatched forward pass per prefix, summed over
all completions in float64: an oracle independent of the code under test (which batches, pads and samples).
"""

from __future__ import annotations

import math

import torch

EOS, MAX_TOKENS, VOCAB = 1, 3, 6


def completions() -> list[list[int]]:
    out = []

    def walk(y):
        for t in range(VOCAB):
            y2 = y + [t]
            if t == EOS or len(y2) == MAX_TOKENS:
                out.append(y2)
            else:
                walk(y2)

    walk([])
    return out


def seq_logp(model, prompt: list[int], y: list[int]) -> torch.Tensor:
    """log pi(y | prompt) as a differentiable scalar: one forward pass over prompt + y, unbatched."""
    ids = torch.tensor([prompt + y])
    logits = model(ids).logits[0, len(prompt) - 1: len(prompt) - 1 + len(y)].double()  # (len(y), V)
    return logits.log_softmax(-1).gather(-1, torch.tensor(y)[:, None]).sum()


def reverse_kl(policy, ref, prompt: list[int]) -> torch.Tensor:
    """KL(pi || pi_ref) at ``prompt``, differentiable in the policy's parameters (the exact gradient by autograd)."""
    total = torch.zeros((), dtype=torch.float64)
    for y in completions():
        lp = seq_logp(policy, prompt, y)
        with torch.no_grad():
            lr = seq_logp(ref, prompt, y)
        total = total + lp.exp() * (lp - lr)
    return total


def forward_kl(policy, ref, prompt: list[int]) -> torch.Tensor:
    """KL(pi_ref || pi) at ``prompt``, differentiable in the policy's parameters."""
    total = torch.zeros((), dtype=torch.float64)
    for y in completions():
        lp = seq_logp(policy, prompt, y)
        with torch.no_grad():
            lr = seq_logp(ref, prompt, y)
        total = total + lr.exp() * (lr - lp)
    return total


def total_mass(model, prompt: list[int]) -> float:
    with torch.no_grad():
        return sum(math.exp(seq_logp(model, prompt, y).item()) for y in completions())
