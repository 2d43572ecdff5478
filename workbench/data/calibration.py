"""Label calibration of graded synthetic documents: does a judge agree with the grade each document was written for?

The documents job (SyCL) asks an LLM for a document at each TREC relevance grade (3 perfectly relevant, 2 highly
relevant, 1 related, 0 irrelevant). Calibration re-grades every (query, document) with a judge on the same 0-3 scale
and compares the *intended* grade with the *judged* one:

* a 4x4 confusion matrix (rows: intended 0..3, columns: judged 0..3);
* Cohen's kappa (Cohen 1960; weighted: Cohen 1968), ``kappa = 1 - sum_ij w_ij O_ij / sum_ij w_ij E_ij`` with observed
  counts ``O``, chance counts ``E_ij = row_i * col_j / n`` and disagreement weights ``w_ij = (i - j)^2`` (quadratic),
  ``|i - j|`` (linear) or ``[i != j]`` (unweighted), computed by ``sklearn.metrics.cohen_kappa_score``;
* Spearman's rank correlation (``scipy.stats.spearmanr``: Pearson's r of the average ranks, so ties are handled);
* exact and within-one agreement, the mean signed gap (judged - intended: the judge's bias), and per intended grade
  the share judged the same.

Judge outputs that could not be parsed arrive as ``None``. They are counted and reported on their own (overall and per
intended grade) and left out of the agreement statistics: never dropped silently, never read as grade 0.

The judge itself is any ``grade_fn(list[(query, doc)]) -> list[int | None]`` (:func:`judge_grades`), so this module
works with whichever judge the recipe names; :func:`relevance_grade_fn` adapts the LLM judge of
:mod:`workbench.verifiers.judge` (its UMBRELA-style TREC 0-3 relevance question; a malformed answer is None).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

__all__ = ["GRADES", "GradeFn", "calibration_report", "render_calibration_markdown", "plot_confusion",
           "filter_disagreeing", "judge_grades", "relevance_grade_fn", "judge_relevance_grader"]

GRADES = (0, 1, 2, 3)
GradeFn = Callable[[list[tuple[str, str]]], list["int | None"]]


def _as_grade(value, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or int(value) not in GRADES:
        raise ValueError(f"{where}: a grade must be an int in 0..3 or None (unparseable), got {value!r}")
    return int(value)


def calibration_report(intended: Sequence[int], judged: Sequence[int | None]) -> dict:
    """Agreement between intended and judged TREC grades (module docstring). JSON-serialisable; statistics that are
    undefined (no parseable pair, or a constant side) are None with the reason under ``notes``."""
    from scipy.stats import spearmanr
    from sklearn.metrics import cohen_kappa_score

    if len(intended) != len(judged):
        raise ValueError(f"intended ({len(intended)}) and judged ({len(judged)}) must have the same length")
    intended = [_as_grade(g, f"intended[{i}]") for i, g in enumerate(intended)]
    if any(g is None for g in intended):
        raise ValueError("intended grades cannot be None")
    judged = [_as_grade(g, f"judged[{i}]") for i, g in enumerate(judged)]
    pairs = [(a, b) for a, b in zip(intended, judged) if b is not None]
    a = np.array([p[0] for p in pairs], dtype=np.int64)
    b = np.array([p[1] for p in pairs], dtype=np.int64)

    confusion = np.zeros((4, 4), dtype=np.int64)  # (intended, judged)
    np.add.at(confusion, (a, b), 1)
    report: dict = {
        "n": len(intended), "n_judged": len(pairs), "n_unparseable": len(intended) - len(pairs),
        "unparseable_rate": (len(intended) - len(pairs)) / len(intended) if intended else None,
        "labels": list(GRADES), "confusion": confusion.tolist(),
        "kappa_quadratic": None, "kappa_linear": None, "kappa_unweighted": None,
        "spearman": None, "spearman_p": None, "exact_agreement": None, "within_one_agreement": None,
        "mean_gap": None, "per_grade": {}, "notes": [],
    }
    for g in GRADES:
        sel = a == g
        n_unp = sum(1 for x, y in zip(intended, judged) if x == g and y is None)
        report["per_grade"][str(g)] = {
            "n": int(sel.sum()), "unparseable": n_unp,
            "agreement": float((b[sel] == g).mean()) if sel.any() else None,
            "mean_judged": float(b[sel].mean()) if sel.any() else None}
    if not pairs:
        report["notes"].append("no parseable judge grade: no agreement statistic is defined")
        return report
    report["exact_agreement"] = float((a == b).mean())
    report["within_one_agreement"] = float((np.abs(a - b) <= 1).mean())
    report["mean_gap"] = float((b - a).mean())
    # Chance agreement is p_e = sum_g P(a=g) P(b=g); kappa is undefined when p_e = 1 (both sides one same grade).
    if len(set(a.tolist()) | set(b.tolist())) > 1:
        for name, weights in [("kappa_quadratic", "quadratic"), ("kappa_linear", "linear"), ("kappa_unweighted", None)]:
            k = cohen_kappa_score(a, b, labels=list(GRADES), weights=weights)
            report[name] = None if math.isnan(k) else float(k)
    else:
        report["notes"].append("kappa undefined: every pair has the same intended and judged grade")
    if len(set(a.tolist())) > 1 and len(set(b.tolist())) > 1:
        rho, p = spearmanr(a, b)
        report["spearman"], report["spearman_p"] = float(rho), float(p)
    else:
        report["notes"].append("spearman undefined: the intended or the judged grades are constant")
    return report


def _fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def render_calibration_markdown(report: dict, title: str = "Label calibration") -> str:
    """A human-readable summary: headline statistics, the confusion matrix, per-grade agreement, notes."""
    r = report
    rate = None if r["unparseable_rate"] is None else 100 * r["unparseable_rate"]
    lines = [f"# {title}", "",
             f"{r['n']} documents; {r['n_judged']} judged, **{r['n_unparseable']} unparseable** judge outputs "
             f"({_fmt(rate, 1)}%), reported apart and left out of "
             "the statistics below.", "",
             "| statistic | value |", "|---|---|",
             f"| Cohen's kappa, quadratic weights | {_fmt(r['kappa_quadratic'])} |",
             f"| Cohen's kappa, linear weights | {_fmt(r['kappa_linear'])} |",
             f"| Cohen's kappa, unweighted | {_fmt(r['kappa_unweighted'])} |",
             f"| Spearman rho (p) | {_fmt(r['spearman'])} ({_fmt(r['spearman_p'], 3)}) |",
             f"| exact agreement | {_fmt(r['exact_agreement'])} |",
             f"| within-one agreement | {_fmt(r['within_one_agreement'])} |",
             f"| mean gap (judged - intended) | {_fmt(r['mean_gap'])} |", "",
             "Confusion matrix (rows: intended grade, columns: judged grade):", "",
             "| intended \\ judged | " + " | ".join(map(str, r["labels"])) + " | unparseable |",
             "|---" * (len(r["labels"]) + 2) + "|"]
    for g, row in zip(r["labels"], r["confusion"]):
        lines.append(f"| **{g}** | " + " | ".join(map(str, row)) + f" | {r['per_grade'][str(g)]['unparseable']} |")
    lines += ["", "| intended grade | judged | share judged the same | mean judged grade |", "|---|---|---|---|"]
    for g in r["labels"]:
        pg = r["per_grade"][str(g)]
        lines.append(f"| {g} | {pg['n']} | {_fmt(pg['agreement'])} | {_fmt(pg['mean_judged'], 2)} |")
    if r.get("notes"):
        lines += ["", "Notes:", *[f"- {n}" for n in r["notes"]]]
    return "\n".join(lines) + "\n"


def plot_confusion(report: dict, path: str | Path, title: str = "Intended vs judged grade") -> Path:
    """The confusion matrix as a PNG heatmap (row-normalised colour, raw counts printed), written atomically."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    counts = np.array(report["confusion"], dtype=float)  # (4, 4)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    fig, ax = plt.subplots(figsize=(4.6, 4))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black")
    labels = report["labels"]
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("judged grade")
    ax.set_ylabel("intended grade")
    kq = report.get("kappa_quadratic")
    ax.set_title(f"{title}\nquadratic kappa {_fmt(kq)}, unparseable {report['n_unparseable']}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of intended row")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def filter_disagreeing(rows: list[dict], judged: list[list[int | None]], max_gap: int,
                       drop_unparseable: bool = False) -> tuple[list[dict], dict]:
    """Drop each document whose judged grade differs from its intended grade by more than ``max_gap``.

    ``judged[i][j]`` is the judge's grade of ``rows[i]["docs"][j]``. Documents the judge could not grade are kept
    unless ``drop_unparseable``. Rows left with no document are dropped. Returns the new rows (``docs``, ``grades``,
    ``provenance`` filtered together) and the counts.
    """
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap}")
    if len(rows) != len(judged):
        raise ValueError(f"rows ({len(rows)}) and judged ({len(judged)}) must align")
    out, counts = [], {"documents": 0, "dropped_disagreeing": 0, "dropped_unparseable": 0, "kept_unparseable": 0,
                       "rows_dropped_empty": 0}
    for i, (row, grades) in enumerate(zip(rows, judged)):
        if len(grades) != len(row["docs"]):
            raise ValueError(f"row {i} (query_id {row.get('query_id')!r}): {len(row['docs'])} docs but "
                             f"{len(grades)} judged grades")
        keep = []
        for j, (g, jg) in enumerate(zip(row["grades"], grades)):
            counts["documents"] += 1
            if jg is None:
                counts["dropped_unparseable" if drop_unparseable else "kept_unparseable"] += 1
                if not drop_unparseable:
                    keep.append(j)
            elif abs(int(jg) - int(g)) > max_gap:
                counts["dropped_disagreeing"] += 1
            else:
                keep.append(j)
        if not keep:
            counts["rows_dropped_empty"] += 1
            continue
        out.append({**row, **{c: [row[c][j] for j in keep] for c in ("docs", "grades", "provenance")}})
    return out, counts


def judge_grades(rows: list[dict], grade_fn: GradeFn, batch_size: int = 32) -> list[list[int | None]]:
    """Grade every (query, doc) of every row with ``grade_fn``, in batches of ``batch_size`` pairs.

    ``grade_fn(list[(query, doc)]) -> list[int | None]`` (0..3, or None for an unparseable judge output) is any judge:
    an LLM judge over a generation backend, a cross-encoder with thresholds, a human-label lookup. Returns one list
    per row, aligned with ``row["docs"]``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    flat = [(r["query"], d) for r in rows for d in r["docs"]]
    grades: list[int | None] = []
    for s in range(0, len(flat), batch_size):
        batch = flat[s:s + batch_size]
        got = list(grade_fn(batch))
        if len(got) != len(batch):
            raise ValueError(f"the grade function returned {len(got)} grades for {len(batch)} (query, doc) pairs")
        grades += [_as_grade(g, f"grade of pair {s + i}") for i, g in enumerate(got)]
    out, k = [], 0
    for r in rows:
        out.append(grades[k:k + len(r["docs"])])
        k += len(r["docs"])
    return out


def relevance_grade_fn(judge) -> GradeFn:
    """Adapt a :class:`workbench.verifiers.judge.JudgeVerifier`: its ``judge_relevance_batch`` (one backend call per
    batch) gives ``details["grade"]``, 0-3, or None when the judge's answer did not parse."""
    def grade(pairs: list[tuple[str, str]]) -> list[int | None]:
        verdicts = judge.judge_relevance_batch([q for q, _ in pairs], [d for _, d in pairs])
        return [v.details.get("grade") for v in verdicts]

    return grade


def judge_relevance_grader(cfg, seed: int) -> GradeFn:
    """The ``lists`` job's default grader factory: the LLM judge configured by ``calibration.judge`` (a
    :class:`~workbench.verifiers.judge.JudgeConfig`; its own ``seed`` is used, so ``seed`` is unused here)."""
    from workbench.verifiers.judge import JudgeVerifier

    return relevance_grade_fn(JudgeVerifier(config=cfg.judge))
