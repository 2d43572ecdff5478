"""The retrieval eval: tiny models on the tiny BEIR fixture, metrics against pytrec_eval on the saved run file and
on the unmodified graded qrels (trec_tiny: missing documents, threshold 2, a query the run misses) and by hand, the
embedding cache, BM25, PromptReps maths by hand on tiny-llama, and every bad-input case."""

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

import workbench_eval.retrieval as retrieval
from workbench_eval import metrics as M
from workbench_eval.search import exact_search, minmax_fuse, sparse_search
from workbench.config import RecipeError, build
from workbench.jobs import load_recipe
from workbench.errors import DataError, WorkbenchError

from conftest import FIXTURES, REPO

BEIR_TINY = FIXTURES / "beir_tiny"
TREC_TINY = FIXTURES / "trec_tiny"
TINY_RECIPE = REPO / "recipes" / "tiny" / "eval_retrieval.yaml"


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private WORKBENCH_HOME, so the embedding cache starts empty (models are passed as paths)."""
    h = tmp_path / "home"
    monkeypatch.setenv("WORKBENCH_HOME", str(h))
    return h


def cfg_for(tmp_path, name="run", **over):
    data = {"job": "eval_retrieval", "run_name": name, "output_dir": str(tmp_path / name),
            "dataset": {"kind": "beir", "path": str(BEIR_TINY), "split": "test"}}
    for k, v in over.items():
        node = data
        parts = k.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return build(retrieval.RetrievalEvalConfig, data)


def copy_beir(tmp_path) -> Path:
    dst = tmp_path / "beir"
    shutil.copytree(BEIR_TINY, dst)
    return dst


def read_qrels(path: Path) -> dict:
    qrels = {}
    for line in path.read_text().splitlines()[1:]:
        q, d, g = line.split("\t")
        qrels.setdefault(q, {})[d] = int(g)
    return qrels


# ----------------------------------------------------------------------------------------------- the full job


def test_tiny_recipe_runs_and_metrics_match_pytrec_eval_on_the_run_file(tmp_path, home, tiny_bert):
    import pytrec_eval

    cfg = load_recipe(TINY_RECIPE, [f"output_dir={tmp_path / 'run'}", f"model.name={tiny_bert}"])
    res = retrieval.run(cfg)
    out = tmp_path / "run"
    saved = json.loads((out / "results.json").read_text())
    assert saved["schema_version"] == 1 and saved["task"] == "retrieval"
    for key in ("model", "model_fingerprint", "dataset", "split", "git_commit", "metrics", "per_query", "counts"):
        assert key in saved
    assert saved["split"] == "test" and saved["model_fingerprint"]
    assert list(saved["metrics"]) == M.METRIC_NAMES
    assert sorted(saved["per_query"]) == ["q5", "q6", "q7", "q8"]
    assert saved["counts"]["docs"] == 12 and saved["counts"]["queries"] == 4
    assert "nDCG@10" in (out / "report.md").read_text()
    assert json.loads((out / "run.json").read_text())["status"] == "done"

    # Independently: parse the TREC file by hand and hand it to pytrec_eval; MRR@10 from the file's own ranks.
    lines = [line.split() for line in (out / "run.trec").read_text().splitlines()]
    assert all(len(p) == 6 and p[1] == "Q0" for p in lines)
    run, ranks = {}, {}
    for q, _, d, rank, score, _ in lines:
        run.setdefault(q, {})[d] = float(score)
        ranks.setdefault(q, []).append((int(rank), d, float(score)))
    for q, rows in ranks.items():  # ranks 1..n, scores non-increasing
        rows.sort()
        assert [r for r, _, _ in rows] == list(range(1, len(rows) + 1))
        assert all(a[2] >= b[2] for a, b in zip(rows, rows[1:]))
        # Precondition of the MRR check below (file ranks vs trec_eval's order): no tied scores, whose order would be
        # the tie-break's. A random encoder's scores lie close together; the file must still tell them apart.
        assert len({s for _, _, s in rows}) == len(rows), f"precondition: tied scores for {q}: {rows}"
    qrels = read_qrels(BEIR_TINY / "qrels" / "test.tsv")
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.1,3,5,10,100", "recall.10,100", "map_cut.100", "P.10"})
    ref = ev.evaluate(run)
    # 4 queries: a mean of 4 doubles is off by at most a few ulps whatever the order of the sum
    for name, key in M.MEASURE_KEYS.items():
        want = sum(ref[q][key] for q in qrels) / len(qrels)
        assert saved["metrics"][name] == pytest.approx(want, abs=1e-12), name
    mrr10, mrr = [], []
    for q in qrels:
        first = next((r for r, d, _ in sorted(ranks[q]) if qrels[q].get(d, 0) > 0), None)
        mrr10.append(1.0 / first if first is not None and first <= 10 else 0.0)
        mrr.append(1.0 / first if first is not None else 0.0)
    assert saved["metrics"]["MRR@10"] == pytest.approx(sum(mrr10) / len(mrr10), abs=1e-12)
    assert saved["metrics"]["MRR"] == pytest.approx(sum(mrr) / len(mrr), abs=1e-12)
    assert res["metrics"] == saved["metrics"]

    # A finished run with the same config is not redone.
    again = retrieval.run(cfg)
    assert again["created"] == saved["created"]


def test_embedding_cache_hit_and_invalidation(tmp_path, home, tiny_bert):
    first = retrieval.run(cfg_for(tmp_path, "a", model__name=tiny_bert))
    assert first["timings"]["cache_hit"] is False
    key = first["representation"]["cache_key"]
    assert (home / "cache" / "embeddings" / f"{key}.npy").is_file()
    second = retrieval.run(cfg_for(tmp_path, "b", model__name=tiny_bert))
    assert second["timings"]["cache_hit"] is True and second["representation"]["cache_key"] == key
    assert second["metrics"] == first["metrics"]
    # A setting that changes the vectors changes the key.
    third = retrieval.run(cfg_for(tmp_path, "c", model__name=tiny_bert, model__max_seq_length=8))
    assert third["timings"]["cache_hit"] is False and third["representation"]["cache_key"] != key
    # So does one changed document.
    folder = copy_beir(tmp_path)
    corpus = (folder / "corpus.jsonl").read_text().replace("Vitamin D increases", "Vitamin D boosts")
    (folder / "corpus.jsonl").write_text(corpus)
    fourth = retrieval.run(cfg_for(tmp_path, "d", model__name=tiny_bert, dataset__path=str(folder)))
    assert fourth["timings"]["cache_hit"] is False and fourth["representation"]["cache_key"] != key
    npys = sorted(p.name for p in (home / "cache" / "embeddings").glob("*.npy"))
    assert len(npys) == 3 and not list((home / "cache" / "embeddings").glob(".*tmp*"))


def test_hf_pooling_matches_sentence_transformers_and_cls_by_hand(tiny_bert):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from workbench_eval.encoders import HFEncoder, SentenceTransformerEncoder

    texts = ["Vitamin D increases calcium absorption.", "Index funds have lower fees than active funds.", "short"]
    st = SentenceTransformerEncoder(tiny_bert, normalize=True, show_progress=False, device="cpu")
    hf = HFEncoder(tiny_bert, pooling="mean", max_seq_length=st.model.max_seq_length, show_progress=False,
                   device="cpu")
    # Unit vectors in float32 from two code paths (mean pooling then normalisation): each component is a sum of 32
    # hidden units and a norm, ~40 roundings of 2^-24 relative: 40 * 6e-8 = 2.4e-6 < 1e-5. A wrong pooling (CLS,
    # padding counted, no normalisation) moves components by > 1e-2.
    np.testing.assert_allclose(hf.encode_corpus(texts), st.encode_corpus(texts), atol=1e-5)
    cls = HFEncoder(tiny_bert, pooling="cls", normalize=False, show_progress=False, device="cpu")
    # Precondition: the check above can fail: on this model another pooling gives other vectors (not a given for a
    # random encoder whose token states might all be alike).
    c = cls.encode_corpus(texts)
    assert np.abs(c / np.linalg.norm(c, axis=1, keepdims=True) - st.encode_corpus(texts)).max() > 1e-2
    tok, model = AutoTokenizer.from_pretrained(tiny_bert), AutoModel.from_pretrained(tiny_bert).eval()
    with torch.no_grad():
        h0 = model(**tok(texts[1], return_tensors="pt")).last_hidden_state[0, 0].numpy()
    # The same forward pass on the same ids, batched vs alone: float32 rounding relative to the state's scale.
    np.testing.assert_allclose(cls.encode_queries(texts[1:2])[0], h0, rtol=1e-5, atol=1e-6 * np.abs(h0).max())


def test_bm25_ranks_the_obvious_document_first(tmp_path):
    res = retrieval.run(cfg_for(tmp_path, "bm25", model__kind="bm25", model__name="bm25"))
    run = M.read_trec_run(tmp_path / "bm25" / "run.trec")
    best = {q: M.ranked(docs)[0][0] for q, docs in run.items()}
    assert best == {"q5": "d11", "q6": "d10", "q7": "d8", "q8": "d7"}
    assert res["metrics"]["nDCG@1"] == 1.0 and res["model_fingerprint"] is None


def test_exact_search_in_chunks_equals_full_matmul_and_faiss():
    rng = np.random.default_rng(0)
    q, c = rng.normal(size=(5, 8)).astype(np.float32), rng.normal(size=(23, 8)).astype(np.float32)
    full = q @ c.T  # (5, 23)
    # A float32 dot product of length 8 is exact to 8 * 2^-24 * |q| |c| (sum of |products| bounded by the norms).
    tol = 8 * 2.0 ** -24 * np.linalg.norm(q, axis=1)[:, None] * np.linalg.norm(c, axis=1).max()
    # The order comparison below is only meaningful if no two scores of a query are within that tolerance.
    gaps = np.diff(np.sort(full, axis=1), axis=1)
    assert (gaps > 2 * tol).all()
    s, i = exact_search(q, c, k=7, chunk_size=4)
    np.testing.assert_array_equal(i, np.argsort(-full, axis=1)[:, :7])
    np.testing.assert_allclose(s, np.take_along_axis(full, i, 1), rtol=0, atol=tol.max())
    s_all, _ = exact_search(q, c, k=100, chunk_size=4)  # k beyond the corpus: all 23
    assert s_all.shape == (5, 23)
    pytest.importorskip("faiss")
    from workbench_eval.search import faiss_search

    fs, fi = faiss_search(q, c, k=7)
    np.testing.assert_array_equal(fi, i)
    np.testing.assert_allclose(fs, s, rtol=0, atol=2 * tol.max())  # two float32 computations, each within tol


def test_faiss_backend_or_a_clear_error_without_it(tmp_path, monkeypatch, home, tiny_bert):
    import sys

    with monkeypatch.context() as m:
        m.setitem(sys.modules, "faiss", None)  # as if faiss-cpu were not installed
        with pytest.raises(WorkbenchError, match=r"faiss needs the faiss-cpu package.*contrast-workbench\[faiss\]"):
            retrieval.run(cfg_for(tmp_path, "nf", model__name=tiny_bert, search__backend="faiss"))
    pytest.importorskip("faiss")
    exact = retrieval.run(cfg_for(tmp_path, "ex", model__name=tiny_bert))
    # Precondition: faiss and numpy sum each float32 score in their own order; for unit vectors of 32 dimensions each
    # is exact to 32 * 2^-24 = 1.9e-6 (see the chunked-search test above), so the rankings must agree only where no
    # two of a query's scores are within twice that. A random encoder puts every score near 1: check the gaps rather
    # than assume them (tiny-bert's closest pair here is 6.6e-6 apart).
    tol = 2 * 32 * 2.0 ** -24
    for q, docs in M.read_trec_run(tmp_path / "ex" / "run.trec").items():
        gap = np.diff(sorted(docs.values())).min()
        assert gap > tol, f"precondition: two of {q}'s scores are {gap} apart, too close to compare two backends"
    flat = retrieval.run(cfg_for(tmp_path, "ff", model__name=tiny_bert, search__backend="faiss"))
    # Metrics depend only on each query's ranking. A swap of two judged documents changes some metric by at least
    # ~1e-3 on this fixture; 1e-9 therefore means "the same rankings", with room for float sums of the means.
    assert flat["metrics"] == pytest.approx(exact["metrics"], abs=1e-9)


def test_mrr_at_10_cuts_the_run_and_ties_follow_trec_eval():
    qrels = {"q": {"r": 1}}
    # r is 11th: MRR@10 must be 0 (plain recip_rank would give 1/11); nDCG@100 = 1/log2(12)
    run = {"q": {**{f"n{i:02d}": 1.0 - i / 100 for i in range(10)}, "r": 0.5}}
    means, per_q, counts = M.evaluate(qrels, run)
    assert means["MRR@10"] == 0.0 and means["nDCG@10"] == 0.0
    assert means["MRR"] == pytest.approx(1 / 11)  # the uncut reciprocal rank, named apart
    assert means["nDCG@100"] == pytest.approx(1 / math.log2(12))
    assert means["Recall@10"] == 0.0 and means["Recall@100"] == 1.0
    # r at rank 3: MRR 1/3, nDCG@10 = 1/log2(4)
    run = {"q": {"a": 0.9, "b": 0.8, "r": 0.7, "c": 0.1}}
    means, _, _ = M.evaluate(qrels, run)
    assert means["MRR@10"] == pytest.approx(1 / 3) and means["nDCG@10"] == pytest.approx(0.5)
    assert means["MRR"] == pytest.approx(1 / 3) and means["P@10"] == pytest.approx(1 / 10)  # P@10 divides by 10
    # Ties: trec_eval orders by doc id descending, so "z" precedes "a"; the written ranks agree.
    assert [d for d, _ in M.ranked({"a": 1.0, "z": 1.0, "m": 2.0})] == ["m", "z", "a"]
    text = M.write_trec_run({"q": {"a": 1.0, "z": 1.0}}, "t")
    assert text.splitlines() == ["q Q0 z 1 1.0 t", "q Q0 a 2 1.0 t"]
    # A query the system returned nothing for scores 0 and is counted, not dropped from the mean.
    means, per_q, counts = M.evaluate({"q": {"r": 1}, "p": {"r": 1}}, {"q": {"r": 1.0}})
    assert per_q["p"]["nDCG@10"] == 0.0 and means["nDCG@10"] == 0.5 and counts["queries_with_empty_run"] == 1


# ----------------------------------------------------------------------------------------------- graded qrels as given


def raw_qrels(path: Path) -> dict:
    """The qrels file read with plain csv code (not our loader): every line as given."""
    qrels = {}
    with open(path, newline="") as fh:
        rows = csv.reader(fh, delimiter="\t")
        next(rows)
        for q, d, g in rows:
            qrels.setdefault(q, {})[d] = int(g)
    return qrels


def load_trec_tiny(threshold: int):
    from workbench_eval.retrieval_data import DatasetConfig, load_data

    return load_data(DatasetConfig(kind="beir", path=str(TREC_TINY), split="test"), threshold)


def test_metrics_equal_pytrec_eval_on_the_unmodified_qrels_and_a_hand_computation(capsys):
    """trec_tiny: qa and qb judge documents missing from the corpus (m1 grade 2, m2 grade 1); qd has only a grade-1
    document, so nothing relevant at threshold 2; the run misses qc; qe is judged but has no text; qb's two
    documents tie at 2.0 (trec_eval puts d5 before d4: doc id descending, whatever the rank column says); the run's
    qz is not judged."""
    import pytrec_eval

    data = load_trec_tiny(2)
    err = capsys.readouterr().err
    assert "2 judgements (1 at grade >= 2) name documents that are not in the corpus" in err
    assert "1 judged queries (e.g. 'qe') have no text" in err
    assert data.counts["qrels_missing_doc"] == 2 and data.counts["qrels_missing_query"] == 1
    assert data.query_ids == ["qa", "qb", "qc", "qd"]  # the searchable ones
    run = M.read_trec_run(TREC_TINY / "run.trec")
    means, per_q, counts = M.evaluate(data.qrels, run, relevance_threshold=2)
    assert sorted(per_q) == ["qa", "qb", "qc", "qd", "qe"] and counts["queries"] == 5
    assert counts["queries_with_empty_run"] == 2 and counts["queries_without_relevant"] == 1

    # (1) By hand, relevant = grade >= 2, DCG = sum g / log2(rank + 1).
    # qa ranks d2(1) d1(3) d3(0) d5(-); relevant {d1, m1}: R = 2, the first relevant at rank 2.
    # qb ranks d5(1) d4(2) d8(-); relevant {d4}: R = 1, at rank 2. Ideal gains qa: 3 2 1 0, qb: 2 1 1.
    ndcg_qa = (1 + 3 / math.log2(3)) / (3 + 2 / math.log2(3) + 1 / math.log2(4))
    ndcg_qb = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3) + 1 / math.log2(4))
    hand = {"qa": {"Recall@10": 0.5, "MAP@100": (1 / 2) / 2, "MRR@10": 0.5, "MRR": 0.5, "P@10": 0.1,
                   "nDCG@10": ndcg_qa, "nDCG@1": 1 / 3},
            "qb": {"Recall@10": 1.0, "MAP@100": 0.5, "MRR@10": 0.5, "MRR": 0.5, "P@10": 0.1,
                   "nDCG@10": ndcg_qb, "nDCG@1": 1 / 2},
            # qd: nothing at grade >= 2, so 0 on the binary measures; nDCG reads grades: d7 (1) first = ideal
            "qd": {"Recall@10": 0.0, "MAP@100": 0.0, "MRR@10": 0.0, "MRR": 0.0, "P@10": 0.0,
                   "nDCG@10": 1.0, "nDCG@1": 1.0}}
    for q, want in hand.items():  # the C code's arithmetic on a handful of doubles: a few ulps at most
        for name, v in want.items():
            assert per_q[q][name] == pytest.approx(v, abs=1e-12), (q, name)
    for q in ("qc", "qe"):  # not in the run: 0 on everything, and in the mean
        assert per_q[q] == {name: 0.0 for name in M.METRIC_NAMES}
    assert means["Recall@10"] == pytest.approx((0.5 + 1.0) / 5, abs=1e-12)
    assert means["MAP@100"] == pytest.approx((0.25 + 0.5) / 5, abs=1e-12)
    assert means["nDCG@10"] == pytest.approx((ndcg_qa + ndcg_qb + 1.0) / 5, abs=1e-12)

    # (2) pytrec_eval itself, on the qrels file read with csv and the run split by hand, mean over every qrels
    # query (trec_eval -c); at threshold 2 and at the default 1.
    raw_run = {}
    for line in (TREC_TINY / "run.trec").read_text().splitlines():
        q, _, d, _, score, _ = line.split()
        raw_run.setdefault(q, {})[d] = float(score)
    qrels = raw_qrels(TREC_TINY / "qrels" / "test.tsv")
    for level in (2, 1):
        ours = M.evaluate(load_trec_tiny(level).qrels, run, relevance_threshold=level)[0]
        nd = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.1,3,5,10,100"}).evaluate(raw_run)
        ev = pytrec_eval.RelevanceEvaluator(qrels, {"recall.10,100", "map_cut.100", "P.10", "recip_rank"},
                                            relevance_level=level).evaluate(raw_run)
        for name, key in {**M.NDCG_KEYS, **M.BINARY_KEYS, "MRR": "recip_rank"}.items():
            table = nd if name.startswith("nDCG") else ev
            want = sum(table[q][key] if q in table else 0.0 for q in qrels) / len(qrels)
            assert ours[name] == pytest.approx(want, abs=1e-12), (level, name)
    assert M.evaluate(load_trec_tiny(1).qrels, run)[1]["qa"]["MRR"] == 1.0  # at threshold 1, d2 counts


def test_query_set_options():
    data, run = load_trec_tiny(2), M.read_trec_run(TREC_TINY / "run.trec")
    assert sorted(M.evaluate(data.qrels, run, relevance_threshold=2, queries="with_relevant")[1]) == \
        ["qa", "qb", "qc", "qe"]  # qd has nothing at grade >= 2
    assert sorted(M.evaluate(data.qrels, run, relevance_threshold=2, queries="run")[1]) == ["qa", "qb", "qd"]
    means, _, _ = M.evaluate(data.qrels, run, relevance_threshold=2, queries="run")
    assert means["MAP@100"] == pytest.approx((0.25 + 0.5 + 0.0) / 3, abs=1e-12)


def test_exponential_gain_ndcg_by_hand():
    """nDCG with gain 2^g - 1 (grades 3, 2, 1 -> 7, 3, 1), against the hand formula; linear stays the default."""
    data, run = load_trec_tiny(2), M.read_trec_run(TREC_TINY / "run.trec")
    _, per_q, _ = M.evaluate(data.qrels, run, relevance_threshold=2, ndcg_gain="exponential")
    # qa: d2 (1 -> 1) at rank 1, d1 (3 -> 7) at rank 2; ideal 7, 3 (m1), 1, 0
    want_qa = (1 + 7 / math.log2(3)) / (7 + 3 / math.log2(3) + 1 / math.log2(4))
    # qb: d5 (1 -> 1), d4 (2 -> 3); ideal 3, 1, 1 (m2)
    want_qb = (1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3) + 1 / math.log2(4))
    assert per_q["qa"]["nDCG@10"] == pytest.approx(want_qa, abs=1e-12)
    assert per_q["qb"]["nDCG@10"] == pytest.approx(want_qb, abs=1e-12)
    assert per_q["qa"]["nDCG@1"] == pytest.approx(1 / 7, abs=1e-12)
    assert per_q["qa"]["MAP@100"] == 0.25  # the binary measures do not see the gain
    linear = M.evaluate(data.qrels, run, relevance_threshold=2)[1]["qa"]["nDCG@10"]
    assert linear != pytest.approx(want_qa, abs=1e-3)  # the two gains really differ on this query


def test_job_metrics_equal_pytrec_eval_on_its_run_file_at_threshold_2(tmp_path):
    """The whole job with metrics.relevance_threshold 2: results.json == pytrec_eval on run.trec + the raw qrels."""
    import pytrec_eval

    res = retrieval.run(cfg_for(tmp_path, "dl", model__kind="bm25", dataset__path=str(TREC_TINY),
                                metrics__relevance_threshold=2))
    assert res["metric_settings"]["relevance_threshold"] == 2
    run = M.read_trec_run(tmp_path / "dl" / "run.trec")
    qrels = raw_qrels(TREC_TINY / "qrels" / "test.tsv")
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"recall.10,100", "map_cut.100", "P.10"}, relevance_level=2)
    ref = ev.evaluate(run)
    nd = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
    assert sorted(res["per_query"]) == sorted(qrels) == ["qa", "qb", "qc", "qd", "qe"]
    for name, key in {**M.BINARY_KEYS, "nDCG@10": "ndcg_cut_10"}.items():
        table = nd if name == "nDCG@10" else ref
        want = sum(table[q][key] if q in table else 0.0 for q in qrels) / len(qrels)
        assert res["metrics"][name] == pytest.approx(want, abs=1e-12), name
    assert res["per_query"]["qa"]["Recall@100"] <= 0.5  # m1 is relevant and cannot be retrieved


def test_qrels_duplicates_conflict_is_an_error_identical_warns(tmp_path, capsys):
    from workbench.store.beir import load_qrels

    folder = copy_beir(tmp_path)
    qrels = folder / "qrels" / "test.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq5\td11\t1\nq6\td10\t1\nq5\td11\t2\n")
    with pytest.raises(DataError, match=r"test\.tsv:4: query 'q5' doc 'd11' has grade 2 here but grade 1 at "
                                        r".*test\.tsv:2; judge each"):
        load_qrels(folder, "test")
    with pytest.raises(DataError, match=r"test\.tsv:4: query 'q5' doc 'd11' has grade 2"):  # the eval too
        retrieval.run(cfg_for(tmp_path, "dup", model__kind="bm25", dataset__path=str(folder)))
    qrels.write_text("query-id\tcorpus-id\tscore\nq5\td11\t1\nq6\td10\t1\nq5\td11\t1\nq6\td10\t1\n")
    capsys.readouterr()
    assert load_qrels(folder, "test") == {"q5": {"d11": 1}, "q6": {"d10": 1}}
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "2 duplicate judgement line(s)" in err[0] and "line 4 = line 2" in err[0]
    res = retrieval.run(cfg_for(tmp_path, "dup-ok", model__kind="bm25", dataset__path=str(folder)))
    assert res["counts"]["judgements"] == 2


# ----------------------------------------------------------------------------------------------- PromptReps


def test_promptreps_representations_equal_a_hand_computation(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workbench_eval.promptreps import PromptRepsEncoder

    enc = PromptRepsEncoder(tiny_llama, batch_size=4, show_progress=False, device="cpu", sparse_max_terms=128)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()

    def authors_prompt(text, kind):  # the wording of ielab/PromptReps prompts/*/{passage,query}_suffix.txt
        msgs = [{"role": "system", "content": "You are an AI assistant that can understand human language."},
                {"role": "user", "content": f'{kind.capitalize()}: "{text}". Use one word to represent the {kind} '
                                            "in a retrieval task. Make sure your word is in lowercase."}]
        prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) + 'The word is: "'
        return tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]

    # Queries: the query wording, and no 64-token cut by default (the authors run --query_max_len 512).
    long_query = " ".join(f"term{i}" for i in range(80))
    assert len(tok.encode(long_query, add_special_tokens=False)) > 64
    assert enc.prompt_ids(long_query, "query") == authors_prompt(long_query, "query")[0].tolist()

    texts = ["The Vitamin D, vitamin!", "Smoking damages lung tissue and causes lung cancer in adults.", "the of"]
    dense, sparse = enc.encode(texts, "passage")  # batched, left-padded
    wants = []
    for i, text in enumerate(texts):
        ids = authors_prompt(text, "passage")
        assert ids[0].tolist() == enc.prompt_ids(text, "passage")  # pieces tokenised apart == the whole prompt
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
        assert out.logits[0, -1].abs().max() < 10, "precondition of the 1e-5 tolerance below: |logit| < 10"
        h = out.hidden_states[-1][0, -1]  # final-layer state of the last prompt token
        # dense = normalised h_t. A unit vector from a left-padded batch vs one unpadded row, float32: attention over
        # padding is masked but summation orders differ; ~2 layers x 64-wide sums of 2^-24 roundings: < 1e-5.
        np.testing.assert_allclose(dense[i], (h / h.norm()).numpy(), atol=1e-5)
        w = torch.log1p(torch.relu(out.logits[0, -1])).numpy()  # sparse = log(1 + relu(z_t))
        row = sparse[i].toarray()[0]
        if i == 0:  # words after lower-casing and stopwords: {vitamin, d}
            allowed = set(tok.encode("vitamin", add_special_tokens=False) + tok.encode("d", add_special_tokens=False))
        elif i == 1:
            words = {"smoking", "damages", "lung", "tissue", "causes", "cancer", "adults"}
            allowed = {t for word in words for t in tok.encode(word, add_special_tokens=False)}
        else:  # only stopwords: the authors' fallback, the 10 largest weights over the vocabulary
            top = np.sort(w)[::-1]
            # precondition: the 10th and 11th weights far apart (~1e-6 noise), or "the 10 largest" is a coin toss
            assert top[9] - top[10] > 1e-5, f"precondition: 10th and 11th sparse weights tie: {top[:12]}"
            allowed = set(np.argsort(-w)[:10].tolist())
        want = np.zeros_like(w)
        for t in allowed:
            want[t] = w[t]
        # log1p(relu(logit)) with |logit| < 10 on this model: the logit's batched-vs-alone rounding (~1e-6 relative)
        # passes through log1p with slope <= 1, so 1e-5 absolute; a wrong token set changes entries by > 1e-2.
        np.testing.assert_allclose(row, want, atol=1e-5)
        assert set(np.nonzero(row)[0].tolist()) <= allowed
        wants.append(want)
    # sparse_quantize: the authors' integer impacts rint(100 w). A weight within ~1e-7 of a .5 boundary could round
    # either way between two float32 computations, hence "integers, within 1 of the hand value".
    enc.sparse_quantize = True
    _, quantised = enc.encode(texts, "passage")
    for i, want in enumerate(wants):
        row = quantised[i].toarray()[0]
        assert np.array_equal(row, np.round(row)) and np.abs(row - np.rint(100 * want)).max() <= 1
        assert row.max() == pytest.approx(100 * want.max(), abs=1)


def test_sparse_scores_and_hybrid_fusion_by_hand():
    import scipy.sparse

    V = 10
    q = scipy.sparse.csr_matrix(([0.5, 2.0], ([0, 0], [3, 7])), shape=(1, V))
    docs = scipy.sparse.csr_matrix(([1.0, 0.25, 1.0, 5.0], ([0, 0, 1, 2], [3, 7, 7, 1])), shape=(3, V))
    s, i = sparse_search(q, docs, k=3, chunk_size=2)
    # d0: 0.5*1 + 2*0.25 = 1.0; d1: 2*1 = 2.0; d2: shares no token = 0
    assert i[0].tolist() == [1, 0, 2] and s[0].tolist() == pytest.approx([2.0, 1.0, 0.0])
    dense = {"q": {"a": 0.9, "b": 0.5, "c": 0.1}}
    sparse_run = {"q": {"b": 3.0, "c": 1.0}}
    # min-max: dense a=1, b=.5, c=0; sparse b=1, c=0; a missing from sparse counts 0
    fused = minmax_fuse([dense, sparse_run], [0.5, 0.5])
    assert fused["q"] == pytest.approx({"a": 0.5, "b": 0.75, "c": 0.0})
    assert minmax_fuse([dense, sparse_run], [1.0, 0.0])["q"] == pytest.approx({"a": 1.0, "b": 0.5, "c": 0.0})


def test_promptreps_job_scores_all_three_modes(tmp_path, home, tiny_llama):
    res = retrieval.run(cfg_for(tmp_path, "pr", model__name=tiny_llama, model__kind="promptreps",
                                model__batch_size=8, promptreps__passage_max_tokens=64))
    assert set(res["metrics_by_mode"]) == {"dense", "sparse", "hybrid"}
    assert res["metrics"] == res["metrics_by_mode"]["hybrid"]
    for mode in ("dense", "sparse", "hybrid"):
        assert (tmp_path / "pr" / f"run.{mode}.trec").is_file()
    key = res["representation"]["cache_key"]
    assert (home / "cache" / "embeddings" / f"{key}.npy").is_file()
    assert (home / "cache" / "embeddings" / f"{key}.sparse.npz").is_file()
    again = retrieval.run(cfg_for(tmp_path, "pr2", model__name=tiny_llama, model__kind="promptreps",
                                  model__batch_size=8, promptreps__passage_max_tokens=64, promptreps__mode="dense"))
    assert again["timings"]["cache_hit"] is True
    assert again["metrics"] == pytest.approx(res["metrics_by_mode"]["dense"])


def test_promptreps_hybrid_fuses_the_deep_lists_then_cuts_to_top_k(tmp_path, home, tiny_llama):
    """150 documents, top_k 100: the hybrid must min-max the dense and sparse lists at fusion depth (here every
    document: depth 1000 > 150), fuse, and only then keep the top 100 (the authors' --depth 1000). Fusing the
    top-100 lists instead gives other scores, which this test tells apart."""
    import scipy.sparse

    from workbench_eval.promptreps import PromptRepsEncoder

    folder = tmp_path / "beir150"
    (folder / "qrels").mkdir(parents=True)
    words = ["vitamin", "bones", "smoking", "lung", "funds", "fees", "coffee", "heart", "tea", "sleep", "rates"]
    docs = [f"Note {i}: {words[i % 11]} and {words[(3 * i + 1) % 11]} in study {i % 7}." for i in range(150)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n"
                                                 for i, t in enumerate(docs)))
    queries = {"qa": "vitamin and bones", "qb": "coffee and the heart"}
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n"
                                                  for q, t in queries.items()))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nqa\td0\t1\nqb\td6\t1\n")
    res = retrieval.run(cfg_for(tmp_path, "deep", model__name=tiny_llama, model__kind="promptreps",
                                model__batch_size=16, promptreps__passage_max_tokens=32, dataset__path=str(folder)))
    assert res["representation"]["fusion_depth"] == 1000
    hybrid = M.read_trec_run(tmp_path / "deep" / "run.hybrid.trec")
    assert all(len(hybrid[q]) == 100 for q in queries)

    # By hand: the corpus representations the job used (its cache files), the queries encoded again.
    key = res["representation"]["cache_key"]
    c_dense = np.load(home / "cache" / "embeddings" / f"{key}.npy")  # (150, H)
    c_sparse = scipy.sparse.load_npz(home / "cache" / "embeddings" / f"{key}.sparse.npz")  # (150, V)
    enc = PromptRepsEncoder(tiny_llama, batch_size=16, passage_max_tokens=32, show_progress=False, device="cpu")
    q_dense, q_sparse = enc.encode(list(queries.values()), "query")
    dense = q_dense @ c_dense.T  # (2, 150)
    sparse = (q_sparse @ c_sparse.T).toarray()  # (2, 150)

    def fuse(depth):
        out = []
        for qi in range(len(queries)):
            fused = np.zeros(150)
            for s, keep in ((dense[qi], np.ones(150, bool)), (sparse[qi], sparse[qi] > 0)):
                idx = np.flatnonzero(keep)
                idx = idx[np.argsort(-s[idx], kind="stable")][:depth]  # the top-depth list
                lo, hi = s[idx].min(), s[idx].max()
                fused[idx] += 0.5 * (s[idx] - lo) / max(hi - lo, 1e-9)
            out.append(fused)
        return out

    deep, shallow = fuse(1000), fuse(100)
    # float32 dot products (torch in the job, numpy here) differ by summation order only, ~sqrt(n) * 2^-24 relative
    # for n-term sums; min-max divides that by the list's score range, which for a random tiny model is narrow
    # (tiny-llama's dense cosines here span ~0.009 just below 1). Precondition of tol: the fused error this gives,
    # 0.5 * sqrt(n) * 2^-24 * max|s| / range, stays under tol / 3 for every list.
    tol = 1e-4
    for qi in range(len(queries)):
        for name, s, n in (("dense", dense[qi], c_dense.shape[1]),
                           ("sparse", sparse[qi][sparse[qi] > 0], c_sparse.shape[1])):
            err = 0.5 * math.sqrt(n) * 2.0 ** -24 * np.abs(s).max() / (s.max() - s.min())
            assert err < tol / 3, f"precondition: query {qi}'s {name} scores span too little for tol: error {err}"
    for qi, q in enumerate(queries):
        got = hybrid[q]
        for d, v in got.items():
            assert v == pytest.approx(deep[qi][int(d[1:])], abs=tol), (q, d)
        left_out = [deep[qi][j] for j in range(150) if f"d{j}" not in got]
        assert max(left_out) <= min(got.values()) + tol  # the job kept the 100 best fused documents
    assert max(abs(deep[qi] - shallow[qi]).max() for qi in range(2)) > 100 * tol  # the depth matters here


# ----------------------------------------------------------------------------------------------- list-wise splits


def write_listwise(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_listwise_rows_become_corpus_and_qrels(tmp_path):
    rows = [{"query_id": "a", "query": "vitamin d bones", "docs": ["vitamin d helps bones", "stock prices", ""],
             "grades": [3, 0, 1]},
            {"query_id": "b", "query": "stock market prices", "docs": ["stock prices", "bread recipes"],
             "grades": [2, 0]},
            {"query_id": "c", "query": "nothing relevant", "docs": ["bread recipes"], "grades": [0]}]
    f = write_listwise(tmp_path / "held_out.jsonl", rows)
    res = retrieval.run(cfg_for(tmp_path, "lw", model__kind="bm25", dataset={"kind": "listwise", "path": str(f)}))
    c = res["counts"]
    assert c["docs"] == 3  # distinct non-empty texts over all rows
    assert c["empty_docs_skipped"] == 1 and c["queries_without_relevant"] == 1 and c["queries"] == 3
    # c is judged (grade 0) so it is in the mean, as trec_eval -c would have it: a and b score 1, c scores 0
    assert res["metrics"]["nDCG@1"] == pytest.approx(2 / 3) and res["split"] is None
    assert res["per_query"]["c"]["nDCG@1"] == 0.0
    only = retrieval.run(cfg_for(tmp_path, "lw2", model__kind="bm25", dataset={"kind": "listwise", "path": str(f)},
                                 metrics__queries="with_relevant"))
    assert only["counts"]["queries"] == 2 and only["metrics"]["nDCG@1"] == 1.0


def test_listwise_parquet_folder_with_column_map(tmp_path):
    from workbench.store import shards

    folder = tmp_path / "documents"
    shards.write_shard(folder, 0, [{"qid": "a", "q": "lung cancer smoking", "texts": ["smoking causes lung cancer",
                                                                                     "tea"], "g": [3, 0]}])
    ds = {"kind": "listwise", "path": str(folder), "column_map": {"query_id": "qid", "query": "q", "docs": "texts",
                                                                   "grades": "g"}}
    with pytest.raises(WorkbenchError, match="manifest.json"):  # an unfinished job's folder is refused
        retrieval.run(cfg_for(tmp_path, "p0", model__kind="bm25", dataset=ds))
    shards.finalize(folder, [1], {"job": "documents"})
    res = retrieval.run(cfg_for(tmp_path, "p1", model__kind="bm25", dataset=ds))
    assert res["metrics"]["MRR@10"] == 1.0


@pytest.mark.parametrize("row, match", [
    ({"query_id": "a", "query": "x", "docs": [], "grades": []}, r"held\.jsonl:1: query 'a' has no judged documents"),
    ({"query_id": "a", "query": "x", "docs": ["d"], "grades": [1, 2]},
     r"held\.jsonl:1: field 'grades' \(role 'grades'\) must be a list with one grade per document: 1 documents"),
    ({"query_id": "a", "question": "x", "docs": ["d"], "grades": [1]},
     r"held\.jsonl: column 'query' for role 'query' not found.*Set dataset\.column_map\.query"),
    ({"query_id": "a", "query": "x", "docs": ["d"], "grades": ["high"]}, r"held\.jsonl:1: field 'grades'\[0\] is 'high'"),
    ({"query_id": "a", "query": "x", "docs": ["d"], "grades": [1.5]}, r"held\.jsonl:1: .*= 1\.5 is not an integer grade"),
    ({"query_id": "a b", "query": "x", "docs": ["d"], "grades": [1]}, r"ids must be non-empty, without spaces"),
])
def test_listwise_bad_rows(tmp_path, row, match):
    f = write_listwise(tmp_path / "held.jsonl", [row])
    with pytest.raises(DataError, match=match):
        retrieval.run(cfg_for(tmp_path, "bad", model__kind="bm25", dataset={"kind": "listwise", "path": str(f)}))


# ----------------------------------------------------------------------------------------------- bad BEIR input


@pytest.mark.parametrize("file, content, match", [
    ("corpus.jsonl", "", r"corpus\.jsonl: empty file"),
    ("corpus.jsonl", '{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n',
     r"corpus\.jsonl:2: duplicate _id 'd1'"),
    ("corpus.jsonl", '{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": \n', r"corpus\.jsonl:2: not valid JSON"),
    ("corpus.jsonl", '{"_id": "d1", "body": "a"}\n', r"corpus\.jsonl:1: missing field 'text'"),
    ("corpus.jsonl", '{"_id": "d 1", "text": "a"}\n', r"corpus\.jsonl: doc _id 'd 1' is empty or holds whitespace"),
    ("queries.jsonl", '{"_id": "q5", "text": "a"}\n{"_id": "q5", "text": "b"}\n', r"queries\.jsonl:2: duplicate _id"),
    ("qrels/test.tsv", "q5\td11\t1\n", r"test\.tsv:1: expected the header 'query-id<TAB>corpus-id<TAB>score'"),
    ("qrels/test.tsv", "query-id\tdoc-id\tscore\nq5\td11\t1\n", r"test\.tsv:1: expected the header"),
    ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq5\td11\n",
     r"test\.tsv:2: expected 3 tab-separated columns, got 2"),
    ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq5\td11\thigh\n", r"test\.tsv:2: field 'score' must be an integer"),
    ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq5\td11\t1.5\n", r"test\.tsv:2: field 'score' must be an integer"),
    ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq5\t\t1\n", r"test\.tsv:2: field 'corpus-id' is empty"),
    ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq5\td11\t0\nq6\td10\t0\n", r"no query has a relevant"),
    ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq5\tmissing\t1\n", r"no query has a relevant"),
])
def test_bad_beir_input_names_file_line_and_field(tmp_path, file, content, match):
    folder = copy_beir(tmp_path)
    (folder / file).write_text(content)
    with pytest.raises(DataError, match=match):
        retrieval.run(cfg_for(tmp_path, "bad", model__kind="bm25", dataset__path=str(folder)))


def test_missing_documents_and_unjudged_queries_are_counted_and_kept(tmp_path, capsys):
    folder = copy_beir(tmp_path)
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq5\td11\t1\nq5\tgone\t1\nq6\td10\t0\nq7\td8\t2\nqX\td8\t1\n")
    res = retrieval.run(cfg_for(tmp_path, "counts", model__kind="bm25", dataset__path=str(folder)))
    c = res["counts"]
    assert c["qrels_missing_doc"] == 1 and c["qrels_missing_query"] == 1 and c["judgements"] == 5
    # Every judged query is in the mean (trec_eval -c): q6 (no relevant doc) and qX (no text) score 0.
    assert c["queries"] == 4 and sorted(res["per_query"]) == ["q5", "q6", "q7", "qX"]
    assert c["queries_without_relevant"] == 1 and c["queries_with_empty_run"] == 1
    assert res["per_query"]["qX"] == {name: 0.0 for name in M.METRIC_NAMES}
    # BM25 ranks d11 first for q5 (test_bm25_ranks_the_obvious_document_first); "gone" cannot be retrieved, and it
    # still counts: recall 1/2, not the 1.0 a loader that dropped it would give.
    assert res["per_query"]["q5"]["Recall@100"] == 0.5 and res["per_query"]["q5"]["MRR@10"] == 1.0
    err = capsys.readouterr().err
    assert len([ln for ln in err.splitlines() if "name documents that are not in the corpus" in ln]) == 1
    # Named deviations: drop those judgements, and evaluate only queries with a relevant one (q6 out; qX stays: it
    # has a relevant judgement, only no text) ...
    old = retrieval.run(cfg_for(tmp_path, "old", model__kind="bm25", dataset__path=str(folder),
                                metrics={"judgements_outside_corpus": "drop", "queries": "with_relevant"}))
    assert sorted(old["per_query"]) == ["q5", "q7", "qX"] and old["per_query"]["q5"]["Recall@100"] == 1.0
    # ... or only the queries the run has (trec_eval without -c): qX out, q6 in.
    in_run = retrieval.run(cfg_for(tmp_path, "in-run", model__kind="bm25", dataset__path=str(folder),
                                   metrics__queries="run"))
    assert sorted(in_run["per_query"]) == ["q5", "q6", "q7"]


def test_missing_split_folder_and_offline_hub(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"qrels/dev\.tsv: qrels file not found; available splits: \['test', 'train'\]"):
        retrieval.run(cfg_for(tmp_path, "a", model__kind="bm25", dataset__split="dev"))
    with pytest.raises(DataError, match="BEIR folder not found"):
        retrieval.run(cfg_for(tmp_path, "b", model__kind="bm25", dataset__path=str(tmp_path / "nope")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    with pytest.raises(DataError, match=r"dataset.name=scifact: BeIR/scifact is not downloaded yet .* offline"):
        retrieval.run(cfg_for(tmp_path, "c", model__kind="bm25", dataset={"kind": "hub", "name": "scifact"}))


def test_unreadable_model_paths(tmp_path):
    from workbench.models import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="not found"):
        retrieval.run(cfg_for(tmp_path, "a", model__name=str(tmp_path / "no-such-model")))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    with pytest.raises(WorkbenchError, match=r"broken: cannot load it as a Hugging Face encoder"):
        retrieval.run(cfg_for(tmp_path, "b", model__name=str(broken)))
    (broken / "config.json").write_text("{not json")
    with pytest.raises(WorkbenchError, match=r"config\.json: not valid JSON"):
        retrieval.run(cfg_for(tmp_path, "c", model__name=str(broken)))


def test_causal_lm_needs_promptreps_kind(tmp_path, tiny_llama):
    with pytest.raises(WorkbenchError, match="causal LM .* set model.kind: promptreps"):
        retrieval.run(cfg_for(tmp_path, "a", model__name=tiny_llama))


@pytest.mark.parametrize("over, match", [
    ({"search__top_k": 10}, "top_k must be >= 100"),
    ({"dataset": {"kind": "hub"}}, "needs dataset.name"),
    ({"dataset": {"kind": "listwise", "path": "x", "column_map": {"doc": "d"}}}, r"unknown role\(s\) \['doc'\]"),
    ({"promptreps__alpha": 1.5}, r"alpha must be in \[0, 1\]"),
    ({"promptreps__fusion_depth": 0}, r"fusion_depth must be >= 1"),
    ({"metrics__relevance_threshold": 0}, r"relevance_threshold must be >= 1"),
    ({"metrics__queries": "all"}, "expected one of"),
    ({"metrics__ndcg_gain": "exp"}, "expected one of"),
    ({"model__kind": "colbert"}, "expected one of"),
])
def test_recipe_validation(tmp_path, over, match):
    with pytest.raises(RecipeError, match=match):
        cfg_for(tmp_path, "v", **over)


def test_cli_eval_retrieval(tmp_path):
    from conftest import run_cli

    run_cli("eval", "retrieval", "--config", "recipes/tiny/eval_retrieval.yaml", f"output_dir={tmp_path / 'r'}")
    assert json.loads((tmp_path / "r" / "results.json").read_text())["metrics"]["nDCG@10"] > 0
    proc = run_cli("eval", "retrieval", "--config", "recipes/tiny/eval_retrieval.yaml", f"output_dir={tmp_path / 'b'}",
                   f"dataset.path={tmp_path / 'missing'}", check=False)
    assert proc.returncode == 2 and "BEIR folder not found" in proc.stderr
