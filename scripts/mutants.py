"""Mutation check: plant deliberate bugs in a scratch copy, run the tests that should catch each, list survivors.

    python scripts/mutants.py                 # every mutant; writes benchmarks/results/mutants.json
    python scripts/mutants.py --only hypo     # the mutants whose name contains "hypo"
    python scripts/mutants.py --list

A test suite that cannot fail proves nothing. Each mutant below is a plausible bug (a sign, a stop-gradient, an
off-by-one, a default that silently changes a metric) in code the suite claims to check. The script copies the
working tree to a scratch folder (the checkout is never touched), applies one mutant at a time, and runs the tests
named for it; the mutant is *killed* when they fail. A survivor means a hole in the tests: the script exits 1.

The copy runs with ``PYTHONPATH=<copy>`` (and a ``workbench_eval -> eval`` link), so both the in-process tests and the
CLI subprocesses they start import the mutated code, not the editable install. Before any mutant, the same tests
run once unmutated: they must pass, or every "kill" would be meaningless.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest node ids or files (with -k expressions as "file::-k expr" not supported: keep ids)
    why: str


MUTANTS = [
    Mutant("hypo-advantage-sign", "workbench/losses/hypo.py",
           "advantage = log_ratio - rloo_baseline(log_ratio)", "advantage = rloo_baseline(log_ratio) - log_ratio",
           ("tests/test_losses_hypo.py", "tests/test_hypo_oracle.py"), "HyPO climbs the KL instead of descending it"),
    Mutant("hypo-no-stop-gradient", "workbench/losses/hypo.py",
           "log_ratio = (policy_logps - ref_logps).detach()", "log_ratio = (policy_logps - ref_logps)",
           ("tests/test_losses_hypo.py", "tests/test_hypo_oracle.py"), "the advantage is differentiated too"),
    Mutant("hypo-term-dropped", "workbench/training/hypo_trainer.py",
           "total = dpo_loss + self.kl_coef * surrogate", "total = dpo_loss + 0.0 * surrogate",
           ("tests/test_hypo_oracle.py",), "HyPO silently becomes DPO"),
    Mutant("hypo-rloo-divides-by-k", "workbench/losses/hypo.py",
           "return (values.sum(dim=-1, keepdim=True) - values) / (k - 1)",
           "return (values.sum(dim=-1, keepdim=True) - values) / k",
           ("tests/test_losses_hypo.py",), "the leave-one-out baseline is not the mean of the others"),
    Mutant("pairs-swap-chosen-rejected", "workbench/data/pairs.py",
           "out.append((hi.completion, lo.completion, hi.score, lo.score))",
           "out.append((lo.completion, hi.completion, hi.score, lo.score))",
           ("tests/test_pairs.py", "tests/test_verify_pairs_cli.py"), "DPO is taught the worse answer"),
    Mutant("dpo-data-swap-chosen-rejected", "workbench/training/preference.py",
           "    if rename:\n        ds = ds.rename_columns(rename)",
           "    if rename:\n        ds = ds.rename_columns(rename)\n    if 'chosen' in ds.column_names:\n"
           "        ds = ds.rename_columns({'chosen': 'rejected', 'rejected': 'chosen'})",
           ("tests/test_learning.py",), "the trainer reads the pairs the wrong way round"),
    Mutant("ws2-no-trace-term", "workbench/losses/listwise/ws2.py",
           "trace_term = C_x.pow(2).sum() + C_y.pow(2).sum() - 2.0 * trace_sqrt(A, eps)", "trace_term = 0.0 * A.sum()",
           ("tests/test_losses_listwise.py",), "ws2 degenerates to a mean-only loss"),
    Mutant("pass-at-k-off-by-one", "eval/reasoning.py", "    if n - c < k:\n        return 1.0",
           "    if n - c <= k:\n        return 1.0", ("tests/test_eval_reasoning.py",), "pass@k inflated"),
    Mutant("grade-0-counts-as-relevant", "eval/metrics.py", "relevance_level=relevance_threshold)",
           "relevance_level=0)", ("tests/test_eval_retrieval.py",), "recall/MAP count judged non-relevant documents"),
    Mutant("qrels-drop-judgements-outside-corpus", "eval/metrics.py",
           'judgements_outside_corpus: Literal["keep", "drop"] = "keep"',
           'judgements_outside_corpus: Literal["keep", "drop"] = "drop"',
           ("tests/test_eval_retrieval.py",), "metrics differ from trec_eval on collections with missing documents"),
    Mutant("kl-sampled-at-t07", "eval/reasoning.py",
           '"sampling": {"n": cfg.kl.n, "temperature": 1.0, "top_p": 1.0,',
           '"sampling": {"n": cfg.kl.n, "temperature": 0.7, "top_p": 1.0,',
           ("tests/test_kl_exact.py",), "the KL is estimated on samples that are not from pi"),
    Mutant("logps-drop-last-token", "workbench/logprobs.py", "comp[i, len(p):len(s)] = True",
           "comp[i, len(p):len(s) - 1] = True", ("tests/test_kl_exact.py",), "the EOS term (last token) is dropped"),
    Mutant("math-verifier-ignores-rejection", "workbench/verifiers/math.py", 'return value, "rejected"',
           "return value, None", ("tests/test_verifiers_math.py",), '"The answer is not 72." passes again'),
    Mutant("rollouts-unseeded-units", "workbench/generation/rollouts.py",
           'seed=derive_seed(cfg.seed, cfg.sampling.seed, "rollouts", unit))', "seed=None)",
           ("tests/test_rollouts_job.py::test_two_ranks_equal_one_rank",),
           "a unit's samples depend on which process drew it (rank, resume): a split or resumed job draws otherwise"),
    Mutant("vllm-cpu-chunked-prefill", "workbench/generation/backends/vllm.py",
           "kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(4096, longest))", "pass",
           ("tests/test_reproducibility.py::test_vllm_per_prompt_seeds_survive_batches_larger_than_a_prefill_chunk",),
           "per-request seeds crash vLLM-CPU on large batches (the quickstart's first stage)"),
    Mutant("weight-sync-pushes-base-without-lora", "workbench/training/weight_sync.py",
           'if pname == "weight" and adapters and not layer.merged', 'if False and pname == "weight" and adapters',
           ("tests/test_weight_sync.py::test_fifty_bf16_syncs_leave_the_reference_bit_identical_and_push_the_merged_"
            "weights",), "vLLM samples from pi_ref instead of the LoRA policy"),
    Mutant("weight-sync-delta-rounded-twice", "workbench/training/weight_sync.py",
           "w = (w.to(acc) + sum(_whole(layer.get_delta_weight(a)).to(acc) for a in adapters)).to(w.dtype)",
           "w = w + sum(_whole(layer.get_delta_weight(a)).to(w.dtype) for a in adapters)",
           ("tests/test_weight_sync.py::test_fifty_bf16_syncs_leave_the_reference_bit_identical_and_push_the_merged_"
            "weights",), "in bf16 the pushed policy is not PEFT's merged policy"),
    Mutant("hf-sampler-keeps-generation-config", "workbench/generation/backends/hf.py",
           "    target.generation_config = GenerationConfig(**special)\n", "",
           ("tests/test_weight_sync.py::test_hf_sampler_ignores_the_models_generation_config",),
           "a shipped repetition_penalty shapes HyPO's 'on-policy' samples"),
    Mutant("resume-keeps-metrics-after-checkpoint", "workbench/training/checkpoints.py",
           "        rows = rows[:keep]\n", "        pass\n",
           ("tests/test_kill_anywhere_training.py::test_training_killed_anywhere_ends_as_the_uninterrupted_run[dpo]",),
           "a resumed run logs some steps twice"),
]


def scratch_copy(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.splitlines()
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    (dest / "workbench_eval").symlink_to("eval")  # the import name of eval/, as the installed package has it


def run_tests(copy: Path, tests: tuple[str, ...], timeout: int) -> tuple[bool, float, str]:
    env = {**os.environ, "PYTHONPATH": str(copy)}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                              cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
        passed, tail = proc.returncode == 0, (proc.stdout + proc.stderr)[-400:]
    except subprocess.TimeoutExpired:
        passed, tail = False, "timeout"
    return passed, time.perf_counter() - t0, tail


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="run only the mutants whose name contains this")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per test run")
    ap.add_argument("--no-record", action="store_true", help="do not write benchmarks/results/mutants.json")
    args = ap.parse_args()
    chosen = [m for m in MUTANTS if args.only in m.name]
    if args.list:
        for m in chosen:
            print(f"{m.name:40s} {m.file}: {m.why}")
        return 0
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from record import begin, write_record

    started = begin()
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        copy = Path(tmp)
        scratch_copy(copy)
        for m in chosen:  # every mutant must still apply to today's code
            text = (copy / m.file).read_text()
            if text.count(m.old) != 1:
                print(f"mutant {m.name}: the text to mutate occurs {text.count(m.old)} times in {m.file}; update it")
                return 2
        tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        print(f"baseline: {len(tests)} test target(s), unmutated ...", flush=True)
        ok, secs, tail = run_tests(copy, tests, args.timeout)
        if not ok:
            print(f"baseline FAILED ({secs:.0f} s): the tests must pass before mutants mean anything\n{tail}")
            return 2
        print(f"baseline passed in {secs:.0f} s", flush=True)
        results = []
        for m in chosen:
            path = copy / m.file
            original = path.read_text()
            path.write_text(original.replace(m.old, m.new))
            survived, secs, tail = run_tests(copy, m.tests, args.timeout)
            path.write_text(original)
            results.append({"mutant": m.name, "file": m.file, "why": m.why, "tests": list(m.tests),
                            "killed": not survived, "seconds": round(secs, 1)})
            print(f"{'SURVIVED' if survived else 'killed  '} {m.name} ({secs:.0f} s)", flush=True)
    survivors = [r["mutant"] for r in results if not r["killed"]]
    print(f"\n{len(results) - len(survivors)} of {len(results)} mutants killed; survivors: {survivors or 'none'}")
    if not args.no_record and not args.only:
        write_record("mutants", {
            "title": "Mutation check (scripts/mutants.py)",
            "tables": [{"title": "Planted bugs and whether the suite catches them",
                        "columns": ["mutant", "file", "what it breaks", "killed", "seconds"],
                        "rows": [[r["mutant"], r["file"], r["why"], "yes" if r["killed"] else "NO", r["seconds"]]
                                 for r in results]}],
            "notes": [f"{len(results) - len(survivors)} of {len(results)} mutants killed; survivors: "
                      f"{', '.join(survivors) or 'none'}."],
            "results": {"mutants": results, "survivors": survivors}}, started)
    return 1 if survivors else 0


if __name__ == "__main__":
    raise SystemExit(main())
