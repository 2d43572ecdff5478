"""`lists` job through a direct `run` call on a documents run built here (no vLLM): calibration with a scripted
judge, dual consistency filtering and mined hard negatives on the tiny BEIR fixture, with tiny-bert embeddings."""

import json
import re

import pytest

from workbench.config import RecipeError, build
from workbench.jobs import load_recipe
from workbench.data import lists
from workbench.store.beir import doc_text, load_corpus
from workbench.data.calibration import calibration_report
from workbench.errors import DataError, WorkbenchError
from workbench.store import shards

from conftest import FIXTURES, REPO

CORPUS = load_corpus(FIXTURES / "beir_tiny")
QUERIES = {"q1": ("Does vitamin D help bones?", "d1"), "q2": ("Do statins reduce heart attack risk?", "d3"),
           "q3": ("Does exercise help depression?", "d4"), "q4": ("Why do central banks raise interest rates?", "d9")}
QRELS_POSITIVE = {"q1": {"d1", "d2"}, "q2": {"d3", "d6"}, "q3": {"d4"}, "q4": {"d9"}}
JUDGE_CALLS = []


def scripted_grader(cfg, seed):
    """A judge for tests: the grade written in the document as [judge=g]; none written -> unparseable (None)."""
    def grade(pairs):
        JUDGE_CALLS.append(len(pairs))
        out = []
        for _, doc in pairs:
            m = re.search(r"\[judge=(\d)\]", doc)
            out.append(int(m.group(1)) if m else None)
        return out
    return grade


def make_documents_run(folder):
    """Rows as `workbench generate documents` writes them: synthetic grades 3/2/1/0, then the real positive at 3.
    The judge agrees with every synthetic grade except q2's grade-2 document (judged 0: a gap of 2)."""
    rows = []
    for qid, (query, pos) in QUERIES.items():
        judge = {3: 3, 2: 0 if qid == "q2" else 2, 1: 1, 0: 0}
        docs = [f"synthetic grade {g} passage for {query} [judge={judge[g]}]" for g in (3, 2, 1, 0)]
        rows.append({"query_id": qid, "query": query, "docs": docs + [doc_text(CORPUS[pos])],
                     "grades": [3, 2, 1, 0, 3], "provenance": ["synthetic:tiny-llama"] * 4 + ["real:positive"]})
    out = folder / "documents"
    shards.write_shard(out, 0, rows[:2])
    shards.write_shard(out, 1, rows[2:])
    shards.finalize(out, [2, 2], {"job": "documents", "model": "tiny-llama"})
    return rows


def config(tmp_path, **over):
    data = {"job": "lists", "run_name": "t", "output_dir": str(tmp_path / "lists_run"),
            "input_dir": str(tmp_path / "docs_run"), "embedding_model": "tiny-bert",
            "calibration": {"enabled": True, "grader": "test_lists_job:scripted_grader", "batch_size": 7, "max_gap": 1},
            "consistency": {"enabled": True, "k": 20, "threshold": -1.0},
            "negatives": {"enabled": True, "corpus": str(FIXTURES / "beir_tiny"), "qrels_split": "train",
                          "num_negatives": 2, "pool_size": 10, "false_negative_ratio": 1.0},
            "sharding": {"shard_size": 3}}
    for key, value in over.items():
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return build(lists.ListsConfig, data)


def assert_minable(rows, encoder, k=2, pool_size=10, margin=1e-4):
    """Precondition of every test that counts mined negatives: each row's pool (the ``pool_size`` best corpus
    documents, its own documents and judged-relevant ones left out) holds at least ``k`` documents below the false-
    negative cut at ratio 1.0, the lowest score of its grade-3 documents, with ``margin`` to spare against float32
    noise (the rule of ``lists`` mining; those documents also lie below every (query, positive) pair of the st
    baseline). A random encoder's cosines all lie near 1, so this is checked, not assumed; with tiny-bert every row
    has at least 6 of 10."""
    import numpy as np

    from workbench.data.consistency import embed, load_encoder
    from workbench.store.beir import load_qrels

    model = load_encoder(encoder)
    ids = list(CORPUS)
    emb = embed(model, [doc_text(CORPUS[d]) for d in ids])
    judged = load_qrels(FIXTURES / "beir_tiny", "train")
    for r in rows:
        q = embed(model, [r["query"]])[0]
        relevant = {d for d, g in judged.get(r["query_id"], {}).items() if g > 0}
        positives = [d for d, g in zip(r["docs"], r["grades"]) if g >= 3]
        s_pos = float((embed(model, positives) @ q).min())
        own = {doc_text(CORPUS[d]) for d in ids} & set(r["docs"])
        pool = sorted((float(s) for d, s in zip(ids, emb @ q) if d not in relevant and doc_text(CORPUS[d]) not in own),
                      reverse=True)[:pool_size]
        below = sum(s <= s_pos - margin for s in pool)
        assert below >= k, (f"precondition: {r['query_id']} needs {k} pool documents below its positives' "
                            f"{s_pos:.6f} - {margin}, has {below}: {np.round(pool, 6).tolist()}")


@pytest.fixture
def docs_run(tmp_path, tiny_bert):
    rows = make_documents_run(tmp_path / "docs_run")
    assert_minable(rows, tiny_bert)
    return rows


def read_out(cfg):
    return shards.read_rows(cfg.run_dir() / "lists")


def check_negatives(rows, source_rows, tag, k):
    by_id = {r["query_id"]: r for r in source_rows}
    texts = {doc_text(v): d for d, v in CORPUS.items()}
    for r in rows:
        mined = [d for d, p in zip(r["docs"], r["provenance"]) if p == tag]
        assert 1 <= len(mined) <= k
        assert [g for g, p in zip(r["grades"], r["provenance"]) if p == tag] == [1] * len(mined)
        assert len(set(mined)) == len(mined)
        for d in mined:
            assert d in texts, "a mined negative comes from the corpus"
            assert texts[d] not in QRELS_POSITIVE[r["query_id"]], "never a judged-relevant document"
            assert d not in by_id[r["query_id"]]["docs"], "never one of the row's own documents"


def test_lists_end_to_end_and_resume(tmp_path, docs_run):
    JUDGE_CALLS.clear()
    cfg = config(tmp_path)
    manifest = lists.run(cfg)
    assert manifest["complete"] and manifest["columns"] == ["query_id", "query", "docs", "grades", "provenance"]
    rows = read_out(cfg)
    assert [r["query_id"] for r in rows] == ["q1", "q2", "q3", "q4"]
    assert sum(JUDGE_CALLS) == 20 and max(JUDGE_CALLS) <= 7  # every document judged once, in batches of 7

    # calibration: the report is exactly the one of the intended vs scripted grades; real positives are unparseable
    report = json.loads((cfg.run_dir() / "calibration.json").read_text())
    intended = [3, 2, 1, 0, 3] * 4
    judged = [3, 2, 1, 0, None, 3, 0, 1, 0, None, 3, 2, 1, 0, None, 3, 2, 1, 0, None]
    expected = calibration_report(intended, judged)
    for key in ("confusion", "n_unparseable", "kappa_quadratic", "kappa_linear", "spearman"):
        assert report[key] == expected[key]
    assert report["n_unparseable"] == 4 and report["confusion"][2] == [1, 0, 3, 0]
    assert report["by_provenance"]["real:positive"]["n_unparseable"] == 4
    assert report["by_provenance"]["synthetic:tiny-llama"]["n_unparseable"] == 0
    assert "**4 unparseable**" in (cfg.run_dir() / "calibration.md").read_text()
    assert (cfg.run_dir() / "calibration.png").read_bytes()[:4] == b"\x89PNG"

    # max_gap 1: q2's grade-2 document (judged 0) is gone; unparseable real positives stay
    q2 = rows[1]
    assert not any("grade 2" in d for d in q2["docs"])
    assert all(len([p for p in r["provenance"] if p == "real:positive"]) == 1 for r in rows)
    check_negatives(rows, docs_run, "real:mined-softmax", 2)
    assert manifest["counts"]["calibration"]["dropped_disagreeing"] == 1
    assert manifest["counts"]["consistency"]["pairs"] == 8 and manifest["counts"]["consistency"]["kept"] == 8

    # resume after a kill: the last shard, the manifest and the done marker gone -> same rows, no judge call
    (cfg.run_dir() / "lists" / "shard-00001.parquet").unlink()
    (cfg.run_dir() / "lists" / "manifest.json").unlink()
    (cfg.run_dir() / "run.json").unlink()
    JUDGE_CALLS.clear()
    lists.run(cfg)
    assert read_out(cfg) == rows and JUDGE_CALLS == []


def test_consistency_drops_documents_or_rows(tmp_path, docs_run):
    # threshold above any cosine: every (query, grade-3) pair fails
    cfg = config(tmp_path, **{"calibration.enabled": False, "negatives.enabled": False, "consistency.threshold": 1.01,
                               "consistency.on_fail": "drop_document"})
    manifest = lists.run(cfg)
    rows = read_out(cfg)
    assert len(rows) == 4 and all(r["grades"] == [2, 1, 0] for r in rows)
    c = manifest["counts"]["consistency"]
    assert (c["pairs"], c["kept"], c["failed_threshold"], c["docs_dropped"]) == (8, 0, 8, 8)
    assert not (cfg.run_dir() / "calibration.json").exists()
    cfg = config(tmp_path / "b", **{"calibration.enabled": False, "negatives.enabled": False,
                                     "consistency.threshold": 1.01, "input_dir": str(tmp_path / "docs_run")})
    with pytest.raises(DataError, match="no rows left"):
        lists.run(cfg)


def test_st_baseline(tmp_path, docs_run):
    cfg = config(tmp_path, **{"calibration.enabled": False, "negatives.method": "st"})
    lists.run(cfg)
    check_negatives(read_out(cfg), docs_run, "real:mined-st", 2)


def test_tiny_recipe(tmp_path, docs_run):
    cfg = load_recipe(REPO / "recipes/tiny/lists.yaml", [f"input_dir={tmp_path / 'docs_run'}",
                                                          f"output_dir={tmp_path / 'recipe_run'}"])
    manifest = lists.run(cfg)
    assert manifest["num_rows"] == 4 and manifest["counts"]["mined_negatives"] == 8  # 2 per query


def test_bad_input(tmp_path, tiny_bert):
    (tmp_path / "docs_run" / "documents").mkdir(parents=True)
    with pytest.raises(WorkbenchError, match="no manifest.json"):
        lists.run(config(tmp_path))
    rows = [{"query_id": "q1", "query": "x", "docs": ["a", "b"], "grades": [3], "provenance": ["s", "s"]}]
    shards.write_shard(tmp_path / "docs_run" / "documents", 0, rows)
    shards.finalize(tmp_path / "docs_run" / "documents", [1], {})
    with pytest.raises(DataError, match=r"shard-00000.parquet row 0: field 'grades' \(role 'grades'\) must be a list "
                                        r"with one grade per document: 2 documents, grades: 1"):
        lists.run(config(tmp_path))
    rows[0]["grades"] = [3, 1]
    rows[0]["provenance"] = ["s"]
    shards.write_shard(tmp_path / "docs_run" / "documents", 0, rows)
    shards.finalize(tmp_path / "docs_run" / "documents", [1], {})  # a rewritten shard needs its manifest rewritten
    with pytest.raises(DataError, match=r"row 0: field 'provenance' must be a list with one entry per document"):
        lists.run(config(tmp_path))


def test_default_llm_judge_on_fake_backend(tmp_path, docs_run):
    """The default grader is the LLM judge; the fake backend answers "The answer is 42." to everything, which has
    no SCORE line: all 20 grades are unparseable and reported so, never read as grade 0."""
    cfg = config(tmp_path, **{"calibration.grader": "workbench.data.calibration:judge_relevance_grader",
                               "calibration.judge": {"backend": {"backend": "fake"}}, "negatives.enabled": False})
    manifest = lists.run(cfg)
    report = json.loads((cfg.run_dir() / "calibration.json").read_text())
    assert report["n_unparseable"] == 20 and report["n_judged"] == 0 and report["kappa_quadratic"] is None
    assert report["confusion"] == [[0] * 4] * 4
    assert manifest["counts"]["calibration"]["kept_unparseable"] == 20 and manifest["num_rows"] == 4


def test_config_errors(tmp_path):
    with pytest.raises(RecipeError, match="negatives.enabled needs negatives.corpus"):
        config(tmp_path, **{"negatives.corpus": None})
    with pytest.raises(RecipeError, match="module:factory"):
        config(tmp_path, **{"calibration.grader": "nocolon"})
    with pytest.raises(RecipeError, match=r"calibration\.judge.*temperature must be >= 0"):
        config(tmp_path, **{"calibration.judge": {"temperature": -1.0}})
    cfg = config(tmp_path, **{"calibration.grader": "no_such_module:factory"})
    make_documents_run(tmp_path / "docs_run")
    with pytest.raises(WorkbenchError, match="cannot load it"):
        lists.run(cfg)
