"""HyPO's reverse-KL term on online samples (Song et al. 2024).

Song, Swamy, Sun, Ramesh, Bagnell, "The Importance of Online Data: Understanding Preference Fine-tuning via
Coverage" (arXiv 2406.01462), Algorithm 1 (HyPO): the offline DPO loss on preference pairs plus a reverse-KL
regulariser estimated on *unlabelled samples from the current policy*:

    L(theta) = L_DPO(theta; D_offline) + lambda * KL(pi_theta || pi_ref),
    KL(pi_theta || pi_ref) = E_{x ~ D, y ~ pi_theta(.|x)} [ log pi_theta(y|x) - log pi_ref(y|x) ].

(Not to be confused with Yuan et al., ICLR 2026, who use the name HyPO for a different, offline method.)

**Gradient.** y is sampled from pi_theta, so the gradient needs the score-function (REINFORCE) identity:

    grad KL = E_{y ~ pi_theta} [ grad log pi_theta(y|x) * (log pi_theta(y|x) - log pi_ref(y|x)) ]
    (the extra term E[grad log pi_theta] = 0).

With k samples per prompt, write r_j = log pi_theta(y_j|x) - log pi_ref(y_j|x) and use the leave-one-out (RLOO)
baseline b_j = (1/(k-1)) sum_{i != j} r_i, which does not depend on y_j and so leaves the estimator unbiased:

    g = (1/k) sum_j grad log pi_theta(y_j|x) * (r_j - b_j).                                  (Eq. 1)

This is the gradient of the surrogate  (1/k) sum_j log pi_theta(y_j|x) * sg[r_j - b_j]  (sg = stop-gradient).
Without the baseline, it equals the gradient of the "k2" estimator 1/2 (log pi_theta - log pi_ref)^2 taken with y
held fixed: grad 1/2 r^2 = r * grad log pi_theta(y|x).

**Not GRPO's "k3".** TRL's GRPO adds k3 = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1 and differentiates it with y held
fixed (no score-function term): grad k3 = (1 - pi_ref(y)/pi_theta(y)) grad log pi_theta(y). Its expectation under
y ~ pi_theta is E_theta[grad log pi_theta] - sum_y pi_ref(y) grad log pi_theta(y) = -E_{y ~ pi_ref}[grad log pi_theta]
= grad KL(pi_ref || pi_theta): the gradient of the *forward* KL, not the reverse KL that HyPO regularises. The value
of k3 is an unbiased estimate of the reverse KL, but its gradient is not the reverse KL's gradient.

=========================  ========  ==============================================================================
input                      shape     meaning
=========================  ========  ==============================================================================
policy_logps               (B, k)    sum_t log pi_theta(y_t | x, y_<t) over each sample's completion tokens, with grad
ref_logps                  (B, k)    the same under pi_ref (no grad)
=========================  ========  ==============================================================================

Flags for the trainer: ``needs_reference`` (pi_ref log-probs on the online samples) and ``needs_policy_samples``
(k samples per prompt from the current policy).
"""

from __future__ import annotations

import torch

needs_reference = True
needs_policy_samples = True


def rloo_baseline(values: torch.Tensor) -> torch.Tensor:
    """Leave-one-out mean along the last dim: b_j = (sum_i v_i - v_j) / (k - 1). Zero when k == 1."""
    k = values.shape[-1]
    if k == 1:
        return torch.zeros_like(values)
    return (values.sum(dim=-1, keepdim=True) - values) / (k - 1)  # (B, k)


def reverse_kl_term(policy_logps: torch.Tensor, ref_logps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The HyPO KL term: a surrogate whose value is the KL estimate and whose gradient is Eq. 1.

    Returns ``(surrogate, kl_estimate)``. ``surrogate`` = sg[mean r] + mean((log pi - sg[log pi]) * sg[r - b]):
    its value equals ``kl_estimate`` = mean_j r_j (an unbiased estimate of KL(pi_theta || pi_ref)), and its gradient is
    the RLOO score-function estimator averaged over the B*k samples.
    """
    if policy_logps.shape != ref_logps.shape or policy_logps.dim() != 2:
        raise ValueError(f"expected (B, k) log-probs, got {tuple(policy_logps.shape)} and {tuple(ref_logps.shape)}")
    log_ratio = (policy_logps - ref_logps).detach()  # (B, k)  r_j
    advantage = log_ratio - rloo_baseline(log_ratio)  # (B, k)  r_j - b_j
    kl_estimate = log_ratio.mean()
    score = policy_logps - policy_logps.detach()  # (B, k)  value 0, gradient grad log pi
    surrogate = kl_estimate + (score * advantage).mean()
    return surrogate, kl_estimate
