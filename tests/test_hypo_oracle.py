"""HyPO's online term against independent oracles on the enumerable toy model (tests/toy.py).

1. The trainer's gradient, averaged over many sampled batches, equals the exact grad KL(pi || pi_ref), computed by
   enumerating all 156 completions per prompt and differentiating the exact sum. The DPO part is weighted 0
   (``dpo.loss_weights=[0.0]``: its gradient is exactly zero), so the whole ``compute_loss`` is the online term:
   deleting it, dropping its stop-gradient or flipping its sign fails here.
2. Negative control: GRPO's k3 estimator on the same samples does NOT match it; it matches the forward KL's gradient
   grad KL(pi_ref || pi) instead (the derivation is in workbench/losses/hypo.py).
3. The LoRA path's reference (the base with the adapter disabled) scores exactly what an explicit frozen copy does.

Monte Carlo tolerance. With N i.i.d. batch gradients g_i, E||mean(g) - g*||^2 = tr(Cov(g)) / N. Over ~10^4
coordinates the squared error concentrates at that value, so we accept below 3x the estimated tr(Cov)/N, and require
each control to sit above 10x: a trainer that computed the control would fail the 3x check by a wide margin.
"""

import json

import pytest
import torch

import toy
from conftest import REPO

PROMPTS = [[3, 4], [4, 4]]  # "a b", "b b"
N_BATCHES = 60
PERTURBATION = 0.4  # sd of the noise added to pi_ref's LM head (see the models fixture)
K = 16  # many samples per batch: the RLOO estimator's variance falls as 1/K, at little extra cost per batch


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workbench.models import resolve_model

    policy = resolve_model("toy-llama")
    ref = tmp_path_factory.mktemp("toy_ref")
    model = AutoModelForCausalLM.from_pretrained(policy)
    # The k3 control needs grad KL(pi_ref || pi) far from grad KL(pi || pi_ref), and the two differ only at second
    # order in the perturbation: 0.4 * N(0, 1) per weight puts them ~29 Monte Carlo errors apart on this toy
    # (0.2 gave 7.8, too close; measured over the 60 batches). The test checks that precondition before the control.
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        model.lm_head.weight.add_(PERTURBATION * torch.randn(model.lm_head.weight.shape, generator=gen))
    model.save_pretrained(ref)
    AutoTokenizer.from_pretrained(policy).save_pretrained(ref)
    return policy, str(ref)


def _trainer(tmp_path, policy, ref, *overrides):
    from workbench.jobs import load_recipe
    from workbench.training.preference import build_trainer

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": p, "chosen": " c", "rejected": " c"}) + "\n"
                             for p in ("a b", "b b")))
    cfg = load_recipe(REPO / "recipes/tiny/hypo.yaml", [
        f"output_dir={tmp_path / 'run'}", f"model={policy}", f"data.path={pairs}", "lora=null",
        f"dpo.ref_model={ref}", "dpo.loss_weights=[0.0]", "hypo.sampler=hf", f"hypo.k={K}", "hypo.max_new_tokens=3",
        "hypo.kl_coef=1.0",
        "hypo.temperature=1.0", "optim.per_device_train_batch_size=2", *overrides])
    return build_trainer(cfg, tmp_path / "run")


class Recording:
    """Wraps the trainer's sampler to keep the samples it drew (for the k3 control)."""

    def __init__(self, sampler):
        self.sampler, self.last = sampler, None

    def sample(self, model, prompts, step):
        self.last = self.sampler.sample(model, prompts, step)
        return self.last


def _flat_grad(model):
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).double()
                      for p in model.parameters()])


def _exact(policy_model, ref_model, kl):
    policy_model.zero_grad()
    (sum(kl(policy_model, ref_model, p) for p in PROMPTS) / len(PROMPTS)).backward()
    return _flat_grad(policy_model)


def _k3_grad(model, ref_model, prompts, samples):
    """GRPO's k3 = r - log r - 1 with r = pi_ref/pi, differentiated with y held fixed (its TRL form)."""
    from workbench.logprobs import sequence_logps

    flat_p = [p for p, ys in zip(prompts, samples) for _ in ys]
    flat_y = [y for ys in samples for y in ys]
    model.zero_grad()
    lp = sequence_logps(model, flat_p, flat_y, pad_id=2)
    with torch.no_grad():
        lr = sequence_logps(ref_model, flat_p, flat_y, pad_id=2)
    log_r = lr - lp
    (log_r.exp() - log_r - 1).mean().backward()
    return _flat_grad(model)


def test_online_gradient_matches_the_enumerated_reverse_kl_gradient(tmp_path, models):
    policy, ref = models
    torch.manual_seed(0)
    t = _trainer(tmp_path, policy, ref)
    t.sampler = Recording(t.sampler)
    batch = t._prepare_inputs(next(iter(t.get_train_dataloader())))
    prompts = t.batch_prompts(batch)
    assert sorted(prompts) == sorted(PROMPTS)  # both pairs' prompts, tokenised as the toy vocabulary says
    model = t.model
    model.train()
    exact_rev = _exact(model, t.ref_model, toy.reverse_kl)
    exact_fwd = _exact(model, t.ref_model, toy.forward_kl)
    grads, k3 = [], []
    for _ in range(N_BATCHES):
        model.zero_grad()
        t.compute_loss(model, batch).backward()
        grads.append(_flat_grad(model))
        k3.append(_k3_grad(model, t.ref_model, prompts, t.sampler.last))
    g, g3 = torch.stack(grads), torch.stack(k3)  # (N, P)
    mc = g.var(dim=0).sum().item() / N_BATCHES  # estimated E||mean - truth||^2
    mc3 = g3.var(dim=0).sum().item() / N_BATCHES
    err = (g.mean(0) - exact_rev).pow(2).sum().item()
    # Precondition of the k3 control below: the exact reverse- and forward-KL gradients are far apart. k3's mean lies
    # within sqrt(3 mc3) of the forward one (checked last), so it is at least 10 max(mc, mc3) from the reverse one
    # whenever the exact gap is (sqrt(10) + sqrt(3))^2 = 24 times that.
    gap = (exact_fwd - exact_rev).pow(2).sum().item()
    assert gap > 24 * max(mc, mc3), (f"precondition: the reverse- and forward-KL gradients are {gap:.3g} apart, under "
                                     f"24 x {max(mc, mc3):.3g}: perturb pi_ref more (PERTURBATION)")
    assert err < 3 * mc, (err, mc)
    # The controls this test must be able to see: no online term at all, and the k3 estimator.
    assert exact_rev.pow(2).sum().item() > 10 * mc
    assert (g3.mean(0) - exact_rev).pow(2).sum().item() > 10 * max(mc, mc3)
    assert (g3.mean(0) - exact_fwd).pow(2).sum().item() < 3 * mc3  # k3's gradient is the forward KL's


def test_the_lora_reference_is_the_base_with_the_adapter_off(tmp_path, models):
    """The default LoRA path: pi_ref = the base model with the adapter disabled. Its log-probs on the online samples
    must equal an explicit frozen copy's, while the policy (adapter on, perturbed) differs."""
    from transformers import AutoModelForCausalLM

    from workbench.training.hypo_trainer import completion_logps

    policy, _ = models
    torch.manual_seed(0)
    t = _trainer(tmp_path, policy, "null", "dpo.ref_model=null", "lora={r: 4, alpha: 8}")
    assert t.ref_model is None and t._is_peft()
    with torch.no_grad():  # move the adapter away from zero so that policy != reference
        for name, p in t.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    frozen = AutoModelForCausalLM.from_pretrained(policy).eval()
    samples = [[[5, 5, 1], [2, 3]], [[1], [4, 4, 4]]]
    with torch.no_grad(), t._reference_context():
        via_trainer = completion_logps(t.model, PROMPTS, samples, 2)
    policy_lp = completion_logps(t.model, PROMPTS, samples, 2).detach()
    explicit = torch.tensor([[toy.seq_logp(frozen, p, y).item() for y in ys] for p, ys in zip(PROMPTS, samples)],
                            dtype=torch.float64)
    # float32 batched/padded vs float64-summed unbatched passes of the same weights: ~1e-6.
    assert torch.allclose(via_trainer.double(), explicit, atol=1e-5)
    assert (policy_lp.double() - explicit).abs().max() > 1e-2  # the adapter really changes the policy
