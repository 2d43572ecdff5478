"""`workbench pairs`: verdicts -> preference pairs in TRL's format, with prompt pruning.

Output rows: ``prompt, chosen, rejected`` (TRL's preference format, conversational when the rollouts used the chat
template, so ``trl.DPOTrainer`` applies the same template the policy saw) plus ``prompt_id, chosen_score,
rejected_score, strategy``.

Strategies (per prompt, over its verified samples; rows skipped by the verifier are ignored):

* ``best_vs_worst``: the highest-scoring sample against the lowest, if their scores differ by at least ``margin``.
* ``margin``: every (i, j) with score_i - score_j >= ``margin``.
* ``veripo``: VerIPO's rule (Li et al. 2025): a *good* sample is correct, consistent and non-repetitive; a *bad*
  one is incorrect or inconsistent. The longest good sample (VerIPO favours long, consistent reasoning) is chosen
  against each bad one. Fields come from the ``rollout_aware`` verifier's details (``accuracy``, ``consistent``,
  ``repetitive``); with a rule verifier, good = passed and bad = not passed.
* ``reflective``: VerIPO's reflective pairs: the chosen response is a bad attempt, a reflection phrase, then a good
  response (self-correction); the rejected response is the bad attempt alone.

Prompt pruning (counted and reported): prompts whose samples all passed (too easy) and prompts where none passed
(no signal) are dropped by default; ``keep_all_passed_fraction`` keeps a share of the easy ones (VerIPO drops 80%).

``max_pairs_per_prompt`` caps pairs per prompt (a seeded shuffle picks which), so the output is deterministic for a
given seed.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass, field
from typing import Literal

from workbench.config import register_job
from workbench.store import shards
from workbench.store.runs import RunConfig

PAIR_COLUMNS = ["prompt", "chosen", "rejected", "prompt_id", "chosen_score", "rejected_score", "strategy"]


def pair_schema(chat: bool):
    """TRL's preference columns: lists of {role, content} messages when conversational, else strings."""
    import pyarrow as pa

    text = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])) if chat else pa.string()
    return pa.schema([("prompt", text), ("chosen", text), ("rejected", text), ("prompt_id", pa.string()),
                      ("chosen_score", pa.float64()), ("rejected_score", pa.float64()), ("strategy", pa.string())])


def why_no_pairs(counts: dict) -> str:
    """The reason, from the counts, that a pairs run came out empty."""
    return (f"{counts['prompts']} prompts: {counts['pruned_all_passed']} pruned because every sample passed, "
            f"{counts['pruned_none_passed']} because none passed, {counts['no_pair']} kept prompts gave no pair "
            f"(strategy and margin), {counts['skipped_rows']} rows skipped by the verifier")


@dataclass
class PruneConfig:
    drop_all_passed: bool = True
    keep_all_passed_fraction: float = 0.0  # of the all-passed prompts, keep this share (seeded)
    drop_none_passed: bool = True

    def validate(self):
        if not 0 <= self.keep_all_passed_fraction <= 1:
            raise ValueError("keep_all_passed_fraction must be in [0, 1]")


@dataclass
class PairsSettings:
    """How pairs are made: the `pairs` recipe's own keys, and the loop's `pairs` section (the same class).
    (The loop's pre-0.2 ``pairs.drop_all_passed``/``drop_none_passed`` are ``prune.*`` keys, as here.)"""

    RENAMED = {"drop_all_passed": "prune.drop_all_passed", "drop_none_passed": "prune.drop_none_passed"}

    strategy: Literal["best_vs_worst", "margin", "veripo", "reflective"] = "best_vs_worst"
    margin: float = 0.5
    max_pairs_per_prompt: int | None = 4
    reflection: str = "\n\nWait, that is not right. Let me solve it again carefully.\n\n"
    prune: PruneConfig = field(default_factory=PruneConfig)
    test_fraction: float = 0.0  # hold out this share of prompts as a `test` split (by prompt, seeded)

    def validate(self):
        if not 0 <= self.test_fraction < 1:
            raise ValueError("test_fraction must be in [0, 1)")


@register_job("pairs")
@dataclass
class PairsConfig(PairsSettings, RunConfig):
    input_dir: str = ""  # a verify run folder (or its verdicts/ subfolder)

    def validate(self):
        if not self.input_dir:
            raise ValueError("input_dir is required: the verify run folder")
        PairsSettings.validate(self)


@dataclass
class ScoredCompletion:
    completion: str
    score: float
    passed: bool
    details: dict

    @property
    def accurate(self) -> bool:
        """The rule verifier's verdict: rollout_aware reports it as details.accuracy; rule verifiers as passed."""
        acc = self.details.get("accuracy")
        return self.passed if acc is None else float(acc) >= 1.0

    @property
    def good(self) -> bool:
        # consistent is None when the judge was off: unknown is not evidence against the sample.
        return self.accurate and self.details.get("consistent") is not False and not self.details.get("repetitive")

    @property
    def bad(self) -> bool:
        return not self.accurate or self.details.get("consistent") is False


def _pairs_for_prompt(samples: list[ScoredCompletion], cfg: PairsConfig, rng: random.Random) -> list[tuple[str, str, float, float]]:
    out: list[tuple[str, str, float, float]] = []
    if cfg.strategy == "best_vs_worst":
        ranked = sorted(samples, key=lambda s: s.score)
        lo, hi = ranked[0], ranked[-1]
        if hi.score - lo.score >= cfg.margin and hi.score > lo.score:
            out.append((hi.completion, lo.completion, hi.score, lo.score))
    elif cfg.strategy == "margin":
        for a in samples:
            for b in samples:
                if a is not b and a.score - b.score >= cfg.margin and a.score > b.score:
                    out.append((a.completion, b.completion, a.score, b.score))
    else:
        good = sorted((s for s in samples if s.good), key=lambda s: len(s.completion), reverse=True)
        bad = [s for s in samples if s.bad]
        if good and bad:
            if cfg.strategy == "veripo":
                out = [(good[0].completion, b.completion, good[0].score, b.score) for b in bad]
            else:  # reflective
                out = [(b.completion.rstrip() + cfg.reflection + good[0].completion.lstrip(), b.completion,
                        good[0].score, b.score) for b in bad]
    # Drop exact duplicates (identical sampled texts) and pairs whose two sides are equal.
    seen, uniq = set(), []
    for p in out:
        if p[0] != p[1] and (p[0], p[1]) not in seen:
            seen.add((p[0], p[1]))
            uniq.append(p)
    rng.shuffle(uniq)
    return uniq[:cfg.max_pairs_per_prompt] if cfg.max_pairs_per_prompt else uniq


def build_pairs(rows: list[dict], cfg: PairsConfig, chat: bool, system_prompt: str | None = None
                ) -> tuple[list[dict], dict]:
    """Group verdict rows by prompt, prune, apply the strategy. Pure: no I/O, deterministic for cfg.seed."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["prompt_id"], []).append(r)
    counts = {"prompts": len(groups), "all_passed": 0, "none_passed": 0, "pruned_all_passed": 0,
              "pruned_none_passed": 0, "kept": 0, "no_pair": 0, "skipped_rows": 0}
    rng = random.Random(cfg.seed)
    out: list[dict] = []
    for pid in sorted(groups, key=str):
        rs = sorted(groups[pid], key=lambda r: r["sample_idx"])
        samples = []
        for r in rs:
            details = json.loads(r["details"]) if isinstance(r["details"], str) else dict(r["details"] or {})
            if "skipped" in details:
                counts["skipped_rows"] += 1
                continue
            samples.append(ScoredCompletion(r["completion"], float(r["score"]), bool(r["passed"]), details))
        if not samples:
            continue
        n_pass = sum(s.passed for s in samples)
        if n_pass == len(samples):
            counts["all_passed"] += 1
            if cfg.prune.drop_all_passed and rng.random() >= cfg.prune.keep_all_passed_fraction:
                counts["pruned_all_passed"] += 1
                continue
        elif n_pass == 0:
            counts["none_passed"] += 1
            if cfg.prune.drop_none_passed:
                counts["pruned_none_passed"] += 1
                continue
        counts["kept"] += 1
        prompt_text = rs[0]["prompt"]
        made = _pairs_for_prompt(samples, cfg, rng)
        if not made:
            counts["no_pair"] += 1
        for chosen, rejected, cs, rsc in made:
            if chat:
                prompt = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
                    {"role": "user", "content": prompt_text}]
                chosen_v, rejected_v = [{"role": "assistant", "content": chosen}], [
                    {"role": "assistant", "content": rejected}]
            else:
                prompt, chosen_v, rejected_v = prompt_text, chosen, rejected
            out.append({"prompt": prompt, "chosen": chosen_v, "rejected": rejected_v, "prompt_id": str(pid),
                        "chosen_score": cs, "rejected_score": rsc, "strategy": cfg.strategy})
    counts["pairs"] = len(out)
    return out, counts


def run(cfg: PairsConfig, overwrite: bool = False) -> dict:
    from workbench.store.files import atomic_write
    from workbench.store.stage import start_stage

    src = shards.stage_folder(cfg.input_dir, "verdicts")
    src_manifest = shards.require_complete(src, "verify")
    rows = shards.read_rows(src)  # read and checked before the run folder exists (see rollouts.run)
    missing = [c for c in ("prompt_id", "prompt", "sample_idx", "completion", "score", "passed", "details")
               if rows and c not in rows[0]]
    if missing:
        from workbench.errors import DataError

        raise DataError(f"{src}: verdict rows lack column(s) {missing}; pairs reads the output of `workbench verify`")
    stage = start_stage(cfg, "pairs", overwrite=overwrite)
    if stage.finished:
        return stage.manifest
    run_ = stage.run
    pairs, counts = build_pairs(rows, cfg, chat=src_manifest.get("chat", True),
                                system_prompt=src_manifest.get("system_prompt"))
    # Held-out split by prompt, so no prompt appears on both sides.
    prompt_ids = sorted({p["prompt_id"] for p in pairs})
    random.Random(cfg.seed + 1).shuffle(prompt_ids)
    test_ids = set(prompt_ids[:int(round(cfg.test_fraction * len(prompt_ids)))])
    splits = {"train": [p for p in pairs if p["prompt_id"] not in test_ids],
              "test": [p for p in pairs if p["prompt_id"] in test_ids]}
    info = {"job": "pairs", "strategy": cfg.strategy, "input": str(src), "columns": PAIR_COLUMNS,
            "conversational": src_manifest.get("chat", True), "counts": counts}
    for name, rows_ in splits.items():
        if name == "test" and not rows_:
            continue
        folder = run_.path / ("pairs" if name == "train" else "pairs_test")
        shards.clean_temp(folder)  # a run killed mid-write left its temp shard; this rerun writes it anew
        shards.write_shard(folder, 0, rows_, pair_schema(src_manifest.get("chat", True)))
        shards.finalize(folder, [len(rows_)], {**info, "split": name})
    atomic_write(run_.path / "pairs" / "counts.json", json.dumps(counts, indent=2))
    run_.log_metrics({f"pairs/{k}": v for k, v in counts.items()})
    run_.mark_done(counts)
    if not pairs:
        print(f"[pairs] no pairs: {why_no_pairs(counts)}. The output has zero rows; a preference stage on it stops "
              "with this reason.", file=sys.stderr)
    print(f"[pairs] {counts['pairs']} pairs from {counts['kept']} of {counts['prompts']} prompts "
          f"(pruned {counts['pruned_all_passed']} all-passed, {counts['pruned_none_passed']} none-passed; "
          f"{counts['no_pair']} kept prompts gave no pair) -> {run_.path / 'pairs'}", file=sys.stderr)
    return json.loads((run_.path / "pairs" / shards.MANIFEST).read_text())
