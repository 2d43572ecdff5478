"""HyPO's KL term: value and gradient against hand computations; it drives the reverse KL to 0.

Tolerances come from error analyses in units of the float32 unit roundoff U32 = 2^-24 (6e-8): the log-probs here are
float32 (``workbench.logprobs`` upcasts logits to float32 -- and so rounds a float64 model's logits to it).
"""

import math

import pytest
import torch

from workbench.losses.hypo import needs_policy_samples, needs_reference, reverse_kl_term, rloo_baseline

U32 = 2.0 ** -24  # float32's unit roundoff


def test_flags():
    assert needs_reference and needs_policy_samples


def test_rloo_baseline_by_hand():
    v = torch.tensor([[1.0, 2.0, 6.0]])
    # b_0 = (2+6)/2 = 4, b_1 = (1+6)/2 = 3.5, b_2 = (1+2)/2 = 1.5. Small integers and halves: every intermediate
    # (sums, differences, / 2) is exact in float32 in any order, so equality, not a tolerance.
    assert torch.equal(rloo_baseline(v), torch.tensor([[4.0, 3.5, 1.5]]))
    assert torch.equal(rloo_baseline(torch.tensor([[5.0]])), torch.zeros(1, 1))


def test_value_and_gradient_by_hand():
    # One prompt, k = 2. policy log-probs are parameters so the gradient w.r.t. them is readable.
    lp = torch.tensor([[-1.0, -3.0]], requires_grad=True)
    ref = torch.tensor([[-2.0, -2.5]])
    surrogate, kl = reverse_kl_term(lp, ref)
    # r = lp - ref = [1.0, -0.5]; KL estimate = mean r = 0.25
    # Dyadic inputs (halves): r, its mean, b, r - b and / (B k) = / 2 are all exact in float32, so exact equality.
    assert kl.item() == 0.25 and surrogate.item() == 0.25
    surrogate.backward()
    # b = [-0.5, 1.0]; r - b = [1.5, -1.5]; d/d lp_j = (r_j - b_j) / (B*k) = [0.75, -0.75]
    assert torch.equal(lp.grad, torch.tensor([[0.75, -0.75]]))


def test_k1_gradient_equals_k2_estimator_gradient():
    # Without a baseline (k = 1), the estimator's gradient is that of 1/2 (log pi - log pi_ref)^2 with y held fixed.
    lp = torch.tensor([[-1.3]], requires_grad=True)
    ref = torch.tensor([[-0.4]])
    reverse_kl_term(lp, ref)[0].backward()
    g_ours = lp.grad.clone()
    lp.grad = None
    (0.5 * (lp - ref) ** 2).sum().backward()
    # Both are the one float32 subtraction lp - ref = -0.9 (times 1 / (B k) = 1, or times d/dx x^2 / 2 = x): equal to
    # a rounding or two, 4 u |lp - ref|. A non-zero baseline at k = 1 or a sign error fails it by ~0.9 or more.
    assert (g_ours - lp.grad).abs().item() <= 4 * U32 * 0.9


def test_gradient_on_a_tiny_model_matches_per_sample_autograd(tiny_llama):
    """(B=2, k=2) completions on tiny-llama: the surrogate's parameter gradient equals
    (1/(B k)) sum_j (r_j - b_j) grad log pi(y_j|x), each grad log pi computed by its own backward pass."""
    from transformers import AutoModelForCausalLM

    from workbench.training.hypo_trainer import completion_logps

    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float64)
    ref = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float64)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    prompts = [[5, 6, 7], [8, 9]]
    samples = [[[10, 11], [12]], [[13, 14, 15], [16, 17]]]
    params = [p for p in policy.parameters()]
    lp = completion_logps(policy, prompts, samples, pad_id=0)  # (2, 2)
    with torch.no_grad():
        ref_lp = completion_logps(ref, prompts, samples, pad_id=0)
    surrogate, kl = reverse_kl_term(lp, ref_lp)
    got = torch.autograd.grad(surrogate, params)

    r = (lp - ref_lp).detach()
    b = torch.stack([r[:, 1], r[:, 0]], dim=1)  # leave-one-out with k = 2: the other sample's r
    adv = r - b
    expected = [torch.zeros_like(p) for p in params]
    scale = [torch.zeros_like(p) for p in params]  # sum_ij |grad log pi_ij| / 4: the size the rounding acts on
    for i in range(2):
        for j in range(2):
            single = completion_logps(policy, [prompts[i]], [[samples[i][j]]], pad_id=0)[0, 0]
            grads = torch.autograd.grad(single, params, allow_unused=True)
            for e, sc, g in zip(expected, scale, grads):
                if g is not None:
                    e += adv[i, j] * g / 4
                    sc += g.abs() / 4
    # The same float32 tensor averaged both times: equal up to the 4-term sum's reassociation, 3 u sum |r| / 4.
    assert kl.item() == pytest.approx(r.mean().item(), abs=3 * U32 * r.abs().mean().item())
    # Per parameter tensor, normwise: the advantages are float32 differences of log-probs -- the code's
    # (sum - r) / (k - 1) and this test's r_other round differently, up to 4 u max|r| absolute each -- and the
    # surrogate's backward enters the network through float32 logits ((adv / 4) (onehot - softmax) over V = 512:
    # ~log2 V + 3 = 12 roundings, 16 u with a margin, relative to |adv|), which the float64 network carries to each
    # entry with its cancellations: so the scale is the tensor's largest sum_ij |grad log pi_ij| / 4, not the entry's.
    # ~5e-7 of that scale here. A wrong baseline (own sample included), 1/B instead of 1/(B k), or r not detached all
    # move a gradient by > 10% of it.
    adv_max = adv.abs().max().item()
    for (name, _), g, e, sc in zip(policy.named_parameters(), got, expected, scale):
        tol = U32 * (4 * r.abs().max().item() + 16 * adv_max) * sc.max().item()
        assert (g - e).abs().max().item() <= tol, (name, (g - e).abs().max().item(), tol)
    # the summed log-probs themselves match a plain teacher-forced forward pass (float64 here, float32 in lp): per
    # token, logit - logsumexp over V in float32 errs by <= u (|logit| + |lse|) (the subtraction, the upcast
    # rounding) + (log2 V + 3) u (the V-term sum); two tokens and their sum. x2 margin. A position off by one (the
    # logit predicting the token itself) or a sum over the prompt tokens moves it by > 1.
    full = policy(torch.tensor([prompts[0] + samples[0][0]])).logits[0]  # (T, V) float64
    logits = full.log_softmax(-1)
    by_hand = logits[2, 10] + logits[3, 11]
    lse = full.logsumexp(-1)
    per_token = [abs(full[t, y].item()) + abs(lse[t].item()) + math.log2(full.shape[-1]) + 3
                 for t, y in ((2, 10), (3, 11))]
    tol = 2 * U32 * (sum(per_token) + abs(by_hand.item()))
    assert lp[0, 0].item() == pytest.approx(by_hand.item(), abs=tol)


def test_kl_term_alone_drives_reverse_kl_to_zero():
    """A categorical policy over 6 'sequences', trained only on the sampled KL term, converges to pi_ref."""
    torch.manual_seed(0)
    ref = torch.log_softmax(torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -2.0]), 0)
    theta = torch.zeros(6, requires_grad=True)
    opt = torch.optim.SGD([theta], lr=0.5)

    def exact_kl():
        logp = torch.log_softmax(theta, 0)
        return float((logp.exp() * (logp - ref)).sum())

    start = exact_kl()
    for _ in range(400):
        logp = torch.log_softmax(theta, 0)
        y = torch.multinomial(logp.exp().detach(), 4 * 8, replacement=True).view(8, 4)  # B=8 prompts, k=4
        surrogate, _ = reverse_kl_term(logp[y], ref[y])
        opt.zero_grad()
        surrogate.backward()
        opt.step()
    assert start > 0.3 and exact_kl() < 0.01 * start


def test_shape_errors():
    with pytest.raises(ValueError, match=r"expected \(B, k\)"):
        reverse_kl_term(torch.zeros(3), torch.zeros(3))
