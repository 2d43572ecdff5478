"""`workbench lists`: graded documents -> list-wise training rows (calibrated, consistency-filtered, hard negatives).

Reads a finished ``documents`` run (rows ``query_id, query, docs, grades, provenance``) and writes rows of the same
schema, top to bottom:

1. **Calibration** (``calibration.enabled``): a judge re-grades every (query, document) on the TREC 0-3 scale
   (:mod:`workbench.data.calibration`; by default the LLM judge of :mod:`workbench.verifiers.judge`, set up by
   ``calibration.judge``; any ``calibration.grader: 'module:factory'`` plugs in another). Judge outputs go to
   resumable shards in ``judged/``; the report lands in ``calibration.json``, ``calibration.md`` and
   ``calibration.png``. With ``calibration.max_gap`` set, documents whose judged grade is further than that from the
   intended one are dropped.
2. **Dual consistency filtering** (``consistency.enabled``, :mod:`workbench.data.consistency`): every (query,
   document at grade >= ``positive_grade``) pair is checked against all queries and all positive documents of the
   run. A failing pair drops its row (``on_fail: drop_row``, CoRNStack drops the pair, and here the row is the
   training instance) or just that document (``drop_document``). The decisions are saved to ``consistency.json``
   once, so a resumed run never re-decides them.
3. **Hard negatives** (``negatives.enabled``, :mod:`workbench.data.negatives`) from a real BEIR corpus, appended at
   ``negatives.grade`` with provenance ``real:mined-softmax`` or ``real:mined-st``. Never mined: the row's own
   documents (same text) and, with ``negatives.qrels_split``, the query's judged-relevant corpus documents. The
   softmax sampler's temperature follows ``negatives.tau`` over the *rows* (row r of R gets ``tau_schedule(..., r,
   R)``), so it is a curriculum only if the trainer reads rows in order; with a shuffling trainer, call
   :func:`workbench.data.negatives.sample_negatives` per epoch instead (CoRNStack's online form). Each row draws from
   its own seeded generator (``[seed, row]``), so a resumed unit comes out identical.
4. Rows go to ``lists/shard-*.parquet`` + ``manifest.json`` (written last), ``sharding.shard_size`` rows per shard;
   rerunning the same command resumes.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from workbench.config import register_job
from workbench.store.list_rows import COLUMNS as LIST_COLUMNS, schema as list_schema  # the one row schema
from workbench.errors import DataError, WorkbenchError
from workbench.store import shards
from workbench.generation.rollouts import ShardingConfig
from workbench.store.runs import RunConfig
from workbench.verifiers.judge import JudgeConfig



@dataclass
class CalibrationConfig:
    enabled: bool = False
    # "module:factory"; factory(calibration_config, seed) -> grade_fn(list[(query, doc)]) -> list[int | None].
    # The default asks the LLM judge (workbench.verifiers.judge) for a TREC 0-3 grade, configured by `judge`.
    grader: str = "workbench.data.calibration:judge_relevance_grader"
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # model, backend, temperature, max_tokens, seed ...
    batch_size: int = 32  # (query, doc) pairs per grader call (one backend call each with the default judge)
    max_gap: int | None = None  # drop documents with |judged - intended| > max_gap; null keeps all
    drop_unparseable: bool = False  # with max_gap: also drop documents the judge could not grade

    def validate(self):
        if ":" not in self.grader:
            raise ValueError(f"grader must look like 'package.module:factory', got {self.grader!r}")
        if self.max_gap is not None and not 0 <= self.max_gap <= 3:
            raise ValueError(f"max_gap must be in 0..3, got {self.max_gap}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")


@dataclass
class ConsistencyConfig:
    enabled: bool = False
    k: int = 2  # CoRNStack: top-2
    threshold: float = 0.7  # CoRNStack's (per a summary; Jina-Code-v2 cosines): set it for your embedding model
    bidirectional: bool = True  # also require the query in the positive's top-k queries
    on_fail: Literal["drop_row", "drop_document"] = "drop_row"

    def validate(self):
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")


@dataclass
class TauConfig:
    schedule: Literal["constant", "linear", "cosine", "geometric"] = "geometric"
    start: float = 0.05
    end: float = 0.001

    def validate(self):
        if self.start < 0 or self.end < 0:
            raise ValueError("temperatures must be >= 0")
        if self.schedule == "geometric" and (self.start <= 0 or self.end <= 0):
            raise ValueError("the geometric schedule needs start > 0 and end > 0")


@dataclass
class NegativesConfig:
    enabled: bool = False
    corpus: str | None = None  # BEIR folder (corpus.jsonl)
    qrels_split: str | None = None  # exclude the query's judged-relevant docs (query ids must match the corpus's)
    method: Literal["softmax", "st"] = "softmax"  # CoRNStack curriculum sampler | sentence-transformers baseline
    num_negatives: int = 4
    false_negative_ratio: float = 0.95  # drop candidates scoring above r * s_pos (see workbench.data.negatives)
    pool_size: int | None = 100  # softmax: sample among the top candidates (null: the whole corpus)
    tau: TauConfig = field(default_factory=TauConfig)
    st_sampling: Literal["top", "random"] = "top"  # st: the library's sampling_strategy
    grade: int = 1  # grade given to mined negatives (the documents job gives BM25 negatives 1, "related")

    def validate(self):
        if self.enabled and not self.corpus:
            raise ValueError("negatives.enabled needs negatives.corpus: a BEIR folder with corpus.jsonl")
        if self.num_negatives < 1:
            raise ValueError("num_negatives must be >= 1")
        if not 0 <= self.false_negative_ratio <= 1:
            raise ValueError("false_negative_ratio must be in [0, 1]")
        if self.pool_size is not None and self.pool_size < 1:
            raise ValueError("pool_size must be >= 1 or null")


@register_job("lists")
@dataclass
class ListsConfig(RunConfig):
    input_dir: str = ""  # a documents run folder (or its documents/ subfolder)
    embedding_model: str = "minilm-l6"  # for consistency filtering and mining
    embedding_batch_size: int = 64
    positive_grade: int = 3  # documents at this grade or above are the query's positives
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    negatives: NegativesConfig = field(default_factory=NegativesConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)

    def validate(self):
        if not self.input_dir:
            raise ValueError("input_dir is required: the documents run folder")


# ----------------------------------------------------------------------------------------------- input


def read_documents(folder: Path) -> list[dict]:
    """The documents run's rows, checked by the one list-wise row reader (workbench.store.list_rows), plus the
    provenance this stage carries along: one entry per document."""
    from workbench.store.list_rows import check_row, columns_for, read_records

    records = read_records(folder, "documents run (input_dir)")
    if not records:
        raise DataError(f"{folder}: the documents run has no rows")
    cols = columns_for(records, {}, LIST_COLUMNS, folder, "the documents job's columns:")
    for where, r in records:
        check_row(where, r, cols, integer_grades=True)
        if not isinstance(r["provenance"], list) or len(r["provenance"]) != len(r["docs"]):
            raise DataError(f"{where}: field 'provenance' must be a list with one entry per document "
                            f"({len(r['docs'])} documents)")
    return [r for _, r in records]


# ----------------------------------------------------------------------------------------------- 1. calibration


def load_grader(cfg: CalibrationConfig, seed: int):
    """Import ``cfg.grader`` ('module:factory') and build the grade function."""
    import importlib

    mod_name, _, attr = cfg.grader.partition(":")
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise WorkbenchError(f"calibration.grader {cfg.grader!r}: cannot load it ({e}). Name an importable "
                             "'module:factory', or set calibration.enabled: false") from None
    return factory(cfg, seed)


def calibrate(cfg: ListsConfig, run_path: Path, rows: list[dict]) -> tuple[list[dict], dict]:
    from workbench.data.calibration import (calibration_report, filter_disagreeing, judge_grades, plot_confusion,
                                            render_calibration_markdown)
    from workbench.store.files import atomic_write

    cal = cfg.calibration
    for i, r in enumerate(rows):
        bad = [g for g in r["grades"] if g not in (0, 1, 2, 3)]
        if bad:
            raise DataError(f"{cfg.input_dir}: row {i} (query_id {r['query_id']!r}): field 'grades' has {bad}; "
                            "calibration compares TREC grades 0-3. Set calibration.enabled: false for other scales.")
    out = run_path / "judged"
    size = cfg.sharding.shard_size
    if not shards.read_manifest(out):
        items = list(enumerate(rows))
        grade_fn = load_grader(cal, cfg.seed) if shards.pending_units(out, len(items), size, shards.Partition()) \
            else None

        def process(chunk, unit):
            judged = judge_grades([r for _, r in chunk], grade_fn, cal.batch_size)
            return [{"row": i, "query_id": r["query_id"], "judged": j} for (i, r), j in zip(chunk, judged)], 0

        shards.run_units(items, size, out, shards.Partition(), process, desc="judge")
        shards.finalize(out, [min(size, len(rows) - k * size) for k in range(shards.num_units(len(rows), size))],
                        {"job": "lists/judged", "grader": cal.grader, "judge_model": cal.judge.model})
    judged = [r["judged"] for r in sorted(shards.read_rows(out), key=lambda r: r["row"])]
    if len(judged) != len(rows):
        raise WorkbenchError(f"{out}: {len(judged)} judged rows for {len(rows)} input rows; rerun with --overwrite")

    intended = [g for r in rows for g in r["grades"]]
    flat = [g for j in judged for g in j]
    report = calibration_report(intended, flat)
    by_prov: dict[str, tuple[list, list]] = {}
    for r, j in zip(rows, judged):
        for p, g, jg in zip(r["provenance"], r["grades"], j):
            by_prov.setdefault(p, ([], []))[0].append(g)
            by_prov[p][1].append(jg)
    report["by_provenance"] = {p: calibration_report(a, b) for p, (a, b) in sorted(by_prov.items())}
    report["grader"], report["judge_model"] = cal.grader, cal.judge.model
    atomic_write(run_path / "calibration.json", json.dumps(report, indent=2))
    md = render_calibration_markdown(report)
    for p, rep in report["by_provenance"].items():
        md += "\n" + render_calibration_markdown(rep, title=f"Provenance `{p}`").replace("# Prov", "## Prov", 1)
    atomic_write(run_path / "calibration.md", md)
    plot_confusion(report, run_path / "calibration.png")
    counts = {"n": report["n"], "n_unparseable": report["n_unparseable"], "kappa_quadratic": report["kappa_quadratic"],
              "spearman": report["spearman"]}
    if cal.max_gap is not None:
        rows, fcounts = filter_disagreeing(rows, judged, cal.max_gap, cal.drop_unparseable)
        counts.update(fcounts)
    return rows, counts


# ----------------------------------------------------------------------------------------------- 2. consistency


def consistency_decisions(cfg: ListsConfig, rows: list[dict], encoder) -> dict:
    """Which rows and documents fail dual consistency (positions in ``rows``), with counts."""
    from workbench.data.consistency import dual_consistency, embed

    pair_row, pair_doc = [], []
    for i, r in enumerate(rows):
        for j, g in enumerate(r["grades"]):
            if g >= cfg.positive_grade:
                pair_row.append(i)
                pair_doc.append(j)
    counts = {"rows_without_positive": sum(1 for r in rows if not any(g >= cfg.positive_grade for g in r["grades"]))}
    if not pair_row:
        return {"drop_rows": [], "drop_docs": {}, "counts": {**counts, "pairs": 0, "kept": 0}}
    c = cfg.consistency
    uniq_rows = sorted(set(pair_row))
    q_emb = embed(encoder, [rows[i]["query"] for i in uniq_rows], cfg.embedding_batch_size)  # (R, D)
    where = {i: n for n, i in enumerate(uniq_rows)}
    d_emb = embed(encoder, [rows[i]["docs"][j] for i, j in zip(pair_row, pair_doc)], cfg.embedding_batch_size)
    res = dual_consistency(q_emb[[where[i] for i in pair_row]], d_emb, list(range(len(pair_row))), c.k, c.threshold,
                           groups=pair_row, bidirectional=c.bidirectional)
    failed: dict[int, list[int]] = {}
    for i, j, ok in zip(pair_row, pair_doc, res.keep.tolist()):
        if not ok:
            failed.setdefault(i, []).append(j)
    if c.on_fail == "drop_row":
        drop_rows, drop_docs = sorted(failed), {}
    else:
        # a row whose every positive failed keeps its other documents: it still ranks grades 2/1/0
        drop_rows, drop_docs = [], {str(i): js for i, js in sorted(failed.items())}
    counts.update(res.counts())
    counts.update({"rows_dropped": len(drop_rows), "docs_dropped": sum(len(v) for v in drop_docs.values()),
                   "similarity_mean": float(res.similarity.mean())})
    return {"drop_rows": drop_rows, "drop_docs": drop_docs, "counts": counts}


def apply_decisions(rows: list[dict], dec: dict) -> list[dict]:
    drop_rows = set(dec["drop_rows"])
    out = []
    for i, r in enumerate(rows):
        if i in drop_rows:
            continue
        bad = set(dec["drop_docs"].get(str(i), []))
        if bad:
            keep = [j for j in range(len(r["docs"])) if j not in bad]
            r = {**r, **{c: [r[c][j] for j in keep] for c in ("docs", "grades", "provenance")}}
        out.append(r)
    return out


# ----------------------------------------------------------------------------------------------- 3. negatives


class SoftmaxMiner:
    """CoRNStack's sampler over a BEIR corpus; corpus embeddings cached (atomically) in the run folder."""

    def __init__(self, cfg: ListsConfig, run_path: Path, encoder, n_rows: int):
        from workbench.store.beir import doc_text, load_corpus, load_qrels

        neg = cfg.negatives
        corpus = load_corpus(neg.corpus)
        self.ids = list(corpus)
        self.texts = [doc_text(corpus[d]) for d in self.ids]
        self.index_of_text: dict[str, list[int]] = {}
        for n, t in enumerate(self.texts):
            self.index_of_text.setdefault(t, []).append(n)
        pos = {d: n for n, d in enumerate(self.ids)}
        self.qrels = {q: [pos[d] for d, g in docs.items() if g > 0 and d in pos]
                      for q, docs in (load_qrels(neg.corpus, neg.qrels_split).items() if neg.qrels_split else [])}
        self.cfg, self.encoder, self.n_rows = cfg, encoder, n_rows
        self.emb = self._corpus_embeddings(run_path)  # (N, D)

    def _corpus_embeddings(self, run_path: Path):
        import os

        import numpy as np

        from workbench.data.consistency import embed

        src = Path(self.cfg.negatives.corpus) / "corpus.jsonl"
        st = src.stat()
        cache = run_path / "cache" / f"corpus-{st.st_size}-{int(st.st_mtime)}.npy"
        if cache.exists():
            return np.load(cache)
        emb = embed(self.encoder, self.texts, self.cfg.embedding_batch_size)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as fh:
            np.save(fh, emb)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, cache)
        return emb

    def exclusions(self, row: dict) -> list[int]:
        ex = [n for t in row["docs"] for n in self.index_of_text.get(t, [])]
        return ex + self.qrels.get(str(row["query_id"]), [])

    def mine(self, chunk: list[tuple[int, dict]]) -> list[tuple[list[str], dict]]:
        import numpy as np

        from workbench.data.consistency import embed
        from workbench.data.negatives import false_negative_mask, sample_negatives, tau_schedule, top_pool

        neg, pg = self.cfg.negatives, self.cfg.positive_grade
        q_emb = embed(self.encoder, [r["query"] for _, r in chunk], self.cfg.embedding_batch_size)  # (B, D)
        positives = [[d for d, g in zip(r["docs"], r["grades"]) if g >= pg] for _, r in chunk]
        p_emb = embed(self.encoder, [d for ps in positives for d in ps], self.cfg.embedding_batch_size)  # (P, D)
        out, at = [], 0
        for (pos_, row), q, ps in zip(chunk, q_emb, positives):
            if not ps:
                out.append(([], {"no_positive": 1}))
                continue
            s_pos = float((p_emb[at:at + len(ps)] @ q).min())  # the lowest positive: the safe side of the cut
            at += len(ps)
            scores = self.emb @ q  # (N,)
            pool = top_pool(scores, neg.pool_size, exclude=self.exclusions(row))
            tau = tau_schedule(neg.tau.schedule, neg.tau.start, neg.tau.end, pos_, self.n_rows)
            rng = np.random.default_rng([self.cfg.seed, pos_])
            pick = sample_negatives(scores[pool], s_pos, neg.num_negatives, tau, neg.false_negative_ratio, rng)
            out.append(([self.texts[n] for n in pool[pick]], {
                "false_negatives_dropped": int(false_negative_mask(scores[pool], s_pos,
                                                                   neg.false_negative_ratio).sum()),
                "tau": tau, "pos_score": s_pos, "neg_scores": scores[pool[pick]].tolist()}))
        return out


def st_negatives(cfg: ListsConfig, run_path: Path, rows: list[dict], encoder) -> dict[str, list[str]]:
    """The baseline over all rows at once (it is the library's batch function), saved once to the run folder."""
    from workbench.store.beir import doc_text, load_corpus, load_qrels
    from workbench.data.negatives import mine_st
    from workbench.store.files import atomic_write

    cache = run_path / "cache" / "st_negatives.json"
    if cache.exists():
        return json.loads(cache.read_text())
    neg = cfg.negatives
    corpus = load_corpus(neg.corpus)
    qrels = load_qrels(neg.corpus, neg.qrels_split) if neg.qrels_split else {}
    todo = [(i, r) for i, r in enumerate(rows) if any(g >= cfg.positive_grade for g in r["grades"])]
    queries = [r["query"] for _, r in todo]
    positives = [[d for d, g in zip(r["docs"], r["grades"]) if g >= cfg.positive_grade] for _, r in todo]
    # qrels positives go in as positives, so the library never returns them as negatives
    judged = [[doc_text(corpus[d]) for d, g in sorted(qrels.get(str(r["query_id"]), {}).items())
               if g > 0 and d in corpus] for _, r in todo]
    # The library draws from corpus + every positive of the data set, so other queries' (synthetic) positives can
    # come back; only corpus documents are kept, and the row's own documents are dropped. Ask for room to do so.
    extra = neg.num_negatives + (max(len(r["docs"]) for _, r in todo) if todo else 0)
    texts = [doc_text(v) for v in corpus.values()]
    mined = mine_st(queries, [p + [j for j in js if j not in p] for p, js in zip(positives, judged)], texts, encoder,
                    neg.num_negatives + extra, neg.false_negative_ratio, neg.st_sampling, cfg.seed,
                    cfg.embedding_batch_size) if todo else []
    in_corpus = set(texts)
    result = {str(i): [t for t in m if t in in_corpus and t not in set(r["docs"])][:neg.num_negatives]
              for (i, r), m in zip(todo, mined)}
    atomic_write(cache, json.dumps(result))
    return result


# ----------------------------------------------------------------------------------------------- the job


def run(cfg: ListsConfig, overwrite: bool = False) -> dict:
    from workbench.models import resolve_model
    from workbench.store.files import atomic_write
    from workbench.store.stage import start_stage

    src = shards.stage_folder(cfg.input_dir, "documents")
    src_manifest = shards.require_complete(src, "documents")
    rows = read_documents(src)  # inputs and models checked before the run folder exists (see rollouts.run)
    if cfg.consistency.enabled or cfg.negatives.enabled:
        resolve_model(cfg.embedding_model)
    if cfg.calibration.enabled and cfg.calibration.grader == CalibrationConfig.grader:
        resolve_model(cfg.calibration.judge.model)
    if cfg.negatives.enabled and not (Path(cfg.negatives.corpus) / "corpus.jsonl").is_file():
        raise DataError(f"negatives.corpus: {cfg.negatives.corpus} holds no corpus.jsonl; point it at a BEIR folder")
    stage = start_stage(cfg, "lists", overwrite=overwrite)
    if stage.finished:
        return stage.manifest
    run_, out = stage.run, stage.out
    counts: dict = {"rows_in": len(rows), "docs_in": sum(len(r["docs"]) for r in rows)}

    if cfg.calibration.enabled:
        rows, counts["calibration"] = calibrate(cfg, run_.path, rows)
        c = counts["calibration"]
        kq = "n/a" if c["kappa_quadratic"] is None else f"{c['kappa_quadratic']:.3f}"
        print(f"[lists] calibration: {c['n']} documents, quadratic kappa {kq}, "
              f"{c['n_unparseable']} unparseable -> {run_.path / 'calibration.md'}", file=sys.stderr)

    loaded: list = []

    def encoder():  # loaded once, and only when a step still has to embed something
        if not loaded:
            from workbench.data.consistency import load_encoder

            loaded.append(load_encoder(cfg.embedding_model))
        return loaded[0]

    if cfg.consistency.enabled:
        dec_file = run_.path / "consistency.json"
        if dec_file.exists():
            dec = json.loads(dec_file.read_text())
        else:
            dec = consistency_decisions(cfg, rows, encoder())
            atomic_write(dec_file, json.dumps(dec, indent=2))
        rows = apply_decisions(rows, dec)
        counts["consistency"] = dec["counts"]
        print(f"[lists] dual consistency: kept {dec['counts']['kept']} of {dec['counts']['pairs']} (query, positive) "
              f"pairs; dropped {dec['counts'].get('rows_dropped', 0)} rows, "
              f"{dec['counts'].get('docs_dropped', 0)} documents", file=sys.stderr)
    if not rows:
        raise DataError(f"{src}: no rows left after calibration/consistency filtering ({counts}); loosen the filters")

    miner, st = None, None
    pending = shards.pending_units(out, len(rows), cfg.sharding.shard_size, shards.Partition())
    if cfg.negatives.enabled and pending:
        if cfg.negatives.method == "softmax":
            miner = SoftmaxMiner(cfg, run_.path, encoder(), len(rows))
        else:
            st = st_negatives(cfg, run_.path, rows, encoder())
    tag = f"real:mined-{cfg.negatives.method}"

    def process(chunk: list[tuple[int, dict]], unit: int):
        if miner is not None:
            mined = miner.mine(chunk)
        elif st is not None:
            mined = [(st.get(str(i), []), {}) for i, _ in chunk]
        else:
            mined = [([], {}) for _ in chunk]
        out_rows = []
        for (_, r), (negs, info) in zip(chunk, mined):
            out_rows.append({"query_id": r["query_id"], "query": r["query"], "docs": list(r["docs"]) + negs,
                             "grades": list(r["grades"]) + [cfg.negatives.grade] * len(negs),
                             "provenance": list(r["provenance"]) + [tag] * len(negs)})
        if cfg.negatives.enabled:
            # Logged before the unit's shard is committed: a unit redone after a kill logs again, so each line names
            # its unit (a reader keeps the last line per unit; summing every line would count a redone unit twice).
            infos = [i for _, i in mined]
            negs = [x for i in infos for x in i.get("neg_scores", [])]
            poss = [i["pos_score"] for i in infos if "pos_score" in i]
            run_.log_metrics({"negatives/rows": len(chunk), "negatives/mined": sum(len(n) for n, _ in mined),
                              "negatives/short_rows": sum(len(n) < cfg.negatives.num_negatives for n, _ in mined),
                              "negatives/no_positive_rows": sum(i.get("no_positive", 0) for i in infos),
                              "negatives/false_negatives_dropped": sum(i.get("false_negatives_dropped", 0)
                                                                       for i in infos),
                              "negatives/pos_score_mean": sum(poss) / len(poss) if poss else None,
                              "negatives/neg_score_mean": sum(negs) / len(negs) if negs else None,
                              "negatives/tau_first": infos[0].get("tau") if infos else None}, unit=unit)
        return out_rows, 0

    shards.run_units(list(enumerate(rows)), cfg.sharding.shard_size, out, shards.Partition(), process, desc="lists",
                     schema=list_schema())
    units = shards.num_units(len(rows), cfg.sharding.shard_size)
    if not rows:  # every row was filtered out: say why, and leave a typed, empty shard for the next stage
        shards.write_shard(out, 0, [], list_schema())
        print(f"[lists] no rows left: {json.dumps({k: v for k, v in counts.items() if k != 'rows_in'})}",
              file=sys.stderr)
    written = shards.read_rows(out, columns=["provenance"])
    counts.update({"rows_out": len(rows), "docs_out": sum(len(r["provenance"]) for r in written),
                   "mined_negatives": sum(p == tag for r in written for p in r["provenance"])})
    manifest = shards.finalize(out, [min(cfg.sharding.shard_size, len(rows) - k * cfg.sharding.shard_size)
                                     for k in range(units)] or [0], {
        "job": "lists", "input": str(src), "input_model": src_manifest.get("model"),
        "embedding_model": cfg.embedding_model, "columns": list(LIST_COLUMNS), "counts": counts})
    run_.log_metrics({f"lists/{k}": v for k, v in counts.items() if isinstance(v, (int, float))})
    run_.mark_done(counts)
    print(f"[lists] complete: {len(rows)} of {counts['rows_in']} rows, {counts['docs_out']} documents "
          f"({counts['mined_negatives']} mined negatives) -> {out}", file=sys.stderr)
    return manifest
