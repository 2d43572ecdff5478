"""The retrieval eval: tiny models on the tiny BEIR fixture, metrics against pytrec_eval on the saved run file,
the embedding cache, BM25, PromptReps maths by hand on tiny-llama, and every bad-input case."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

import eval.retrieval as retrieval
from eval import metrics as M
from eval.search import exact_search, minmax_fuse, sparse_search
from workbench.config import RecipeError, build, load_recipe
from workbench.errors import DataError, WorkbenchError

from conftest import FIXTURES, REPO

BEIR_TINY = FIXTURES / "beir_tiny"
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
    qrels = read_qrels(BEIR_TINY / "qrels" / "test.tsv")
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.1,3,5,10,100", "recall.10,100", "map_cut.100"})
    ref = ev.evaluate(run)
    for name, key in M.MEASURE_KEYS.items():
        want = sum(ref[q][key] for q in qrels) / len(qrels)
        assert saved["metrics"][name] == pytest.approx(want, abs=1e-12), name
    mrr = []
    for q in qrels:
        first = next((r for r, d, _ in sorted(ranks[q]) if qrels[q].get(d, 0) > 0), None)
        mrr.append(1.0 / first if first is not None and first <= 10 else 0.0)
    assert saved["metrics"]["MRR@10"] == pytest.approx(sum(mrr) / len(mrr), abs=1e-12)
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

    from eval.encoders import HFEncoder, SentenceTransformerEncoder

    texts = ["Vitamin D increases calcium absorption.", "Index funds have lower fees than active funds.", "short"]
    st = SentenceTransformerEncoder(tiny_bert, normalize=True, show_progress=False, device="cpu")
    hf = HFEncoder(tiny_bert, pooling="mean", max_seq_length=st.model.max_seq_length, show_progress=False,
                   device="cpu")
    np.testing.assert_allclose(hf.encode_corpus(texts), st.encode_corpus(texts), atol=1e-5)
    cls = HFEncoder(tiny_bert, pooling="cls", normalize=False, show_progress=False, device="cpu")
    tok, model = AutoTokenizer.from_pretrained(tiny_bert), AutoModel.from_pretrained(tiny_bert).eval()
    with torch.no_grad():
        h0 = model(**tok(texts[1], return_tensors="pt")).last_hidden_state[0, 0].numpy()
    np.testing.assert_allclose(cls.encode_queries(texts[1:2])[0], h0, atol=1e-5)


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
    s, i = exact_search(q, c, k=7, chunk_size=4)
    np.testing.assert_array_equal(i, np.argsort(-full, axis=1)[:, :7])
    np.testing.assert_allclose(s, np.take_along_axis(full, i, 1), rtol=1e-6)
    s_all, _ = exact_search(q, c, k=100, chunk_size=4)  # k beyond the corpus: all 23
    assert s_all.shape == (5, 23)
    pytest.importorskip("faiss")
    from eval.search import faiss_search

    fs, fi = faiss_search(q, c, k=7)
    np.testing.assert_array_equal(fi, i)
    np.testing.assert_allclose(fs, s, rtol=1e-5)


def test_faiss_backend_or_a_clear_error_without_it(tmp_path, monkeypatch, home, tiny_bert):
    import sys

    with monkeypatch.context() as m:
        m.setitem(sys.modules, "faiss", None)  # as if faiss-cpu were not installed
        with pytest.raises(WorkbenchError, match=r"faiss needs the faiss-cpu package.*contrast-workbench\[faiss\]"):
            retrieval.run(cfg_for(tmp_path, "nf", model__name=tiny_bert, search__backend="faiss"))
    pytest.importorskip("faiss")
    exact = retrieval.run(cfg_for(tmp_path, "ex", model__name=tiny_bert))
    flat = retrieval.run(cfg_for(tmp_path, "ff", model__name=tiny_bert, search__backend="faiss"))
    assert flat["metrics"] == pytest.approx(exact["metrics"], abs=1e-9)


def test_mrr_at_10_cuts_the_run_and_ties_follow_trec_eval():
    qrels = {"q": {"r": 1}}
    # r is 11th: MRR@10 must be 0 (plain recip_rank would give 1/11); nDCG@100 = 1/log2(12)
    run = {"q": {**{f"n{i:02d}": 1.0 - i / 100 for i in range(10)}, "r": 0.5}}
    means, per_q, counts = M.evaluate(qrels, run)
    assert means["MRR@10"] == 0.0 and means["nDCG@10"] == 0.0
    assert means["nDCG@100"] == pytest.approx(1 / math.log2(12))
    assert means["Recall@10"] == 0.0 and means["Recall@100"] == 1.0
    # r at rank 3: MRR 1/3, nDCG@10 = 1/log2(4)
    run = {"q": {"a": 0.9, "b": 0.8, "r": 0.7, "c": 0.1}}
    means, _, _ = M.evaluate(qrels, run)
    assert means["MRR@10"] == pytest.approx(1 / 3) and means["nDCG@10"] == pytest.approx(0.5)
    # Ties: trec_eval orders by doc id descending, so "z" precedes "a"; the written ranks agree.
    assert [d for d, _ in M.ranked({"a": 1.0, "z": 1.0, "m": 2.0})] == ["m", "z", "a"]
    text = M.write_trec_run({"q": {"a": 1.0, "z": 1.0}}, "t")
    assert text.splitlines() == ["q Q0 z 1 1.0 t", "q Q0 a 2 1.0 t"]
    # A query the system returned nothing for scores 0 and is counted, not dropped from the mean.
    means, per_q, counts = M.evaluate({"q": {"r": 1}, "p": {"r": 1}}, {"q": {"r": 1.0}})
    assert per_q["p"]["nDCG@10"] == 0.0 and means["nDCG@10"] == 0.5 and counts["queries_with_empty_run"] == 1


# ----------------------------------------------------------------------------------------------- PromptReps


def test_promptreps_representations_equal_a_hand_computation(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eval.promptreps import PromptRepsEncoder

    enc = PromptRepsEncoder(tiny_llama, batch_size=4, show_progress=False, device="cpu", sparse_max_terms=128)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    texts = ["The Vitamin D, vitamin!", "Smoking damages lung tissue and causes lung cancer in adults.", "the of"]
    dense, sparse = enc.encode(texts, "passage")  # batched, left-padded
    for i, text in enumerate(texts):
        msgs = [{"role": "system", "content": "You are an AI assistant that can understand human language."},
                {"role": "user", "content": f'Passage: "{text}". Use one most important word to represent the '
                                            "passage in retrieval task. Make sure your word is in lowercase."}]
        prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) + 'The word is: "'
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        assert ids[0].tolist() == enc.prompt_ids(text, "passage")  # pieces tokenised apart == the whole prompt
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
        h = out.hidden_states[-1][0, -1]  # final-layer state of the last prompt token
        np.testing.assert_allclose(dense[i], (h / h.norm()).numpy(), atol=1e-5)  # dense = normalised h_t
        w = torch.log1p(torch.relu(out.logits[0, -1])).numpy()  # sparse = log(1 + relu(z_t))
        row = sparse[i].toarray()[0]
        if i == 0:  # words after lower-casing and stopwords: {vitamin, d}
            allowed = set(tok.encode("vitamin", add_special_tokens=False) + tok.encode("d", add_special_tokens=False))
        elif i == 1:
            words = {"smoking", "damages", "lung", "tissue", "causes", "cancer", "adults"}
            allowed = {t for word in words for t in tok.encode(word, add_special_tokens=False)}
        else:  # only stopwords: the authors' fallback, the 10 largest weights over the vocabulary
            allowed = set(np.argsort(-w)[:10].tolist())
        want = np.zeros_like(w)
        for t in allowed:
            want[t] = w[t]
        np.testing.assert_allclose(row, want, atol=1e-5)
        assert set(np.nonzero(row)[0].tolist()) <= allowed


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
    assert c["empty_docs_skipped"] == 1 and c["queries_without_relevant"] == 1 and c["queries"] == 2
    assert res["metrics"]["nDCG@1"] == 1.0 and res["split"] is None


def test_listwise_parquet_folder_with_column_map(tmp_path):
    from workbench.generation import shards

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
    ({"query_id": "a", "query": "x", "docs": ["d"], "grades": [1, 2]}, r"held\.jsonl:1: 1 docs but 2 grades"),
    ({"query_id": "a", "question": "x", "docs": ["d"], "grades": [1]}, r"held\.jsonl:1: missing column\(s\) 'query'"),
    ({"query_id": "a", "query": "x", "docs": ["d"], "grades": ["high"]}, r"grades\[0\] = 'high' is not an integer"),
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
    ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq5\t\t1\n", r"test\.tsv:2: field 'corpus-id' is empty"),
    ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq5\td11\t0\nq6\td10\t0\n", r"no query has a relevant"),
    ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq5\tmissing\t1\n", r"no query has a relevant"),
])
def test_bad_beir_input_names_file_line_and_field(tmp_path, file, content, match):
    folder = copy_beir(tmp_path)
    (folder / file).write_text(content)
    with pytest.raises(DataError, match=match):
        retrieval.run(cfg_for(tmp_path, "bad", model__kind="bm25", dataset__path=str(folder)))


def test_missing_documents_and_unjudged_queries_are_counted(tmp_path):
    folder = copy_beir(tmp_path)
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq5\td11\t1\nq5\tgone\t1\nq6\td10\t0\nq7\td8\t2\nqX\td8\t1\n")
    res = retrieval.run(cfg_for(tmp_path, "counts", model__kind="bm25", dataset__path=str(folder)))
    c = res["counts"]
    assert c["qrels_missing_doc"] == 1 and c["qrels_missing_query"] == 1
    assert c["queries_without_relevant"] == 1 and c["queries"] == 2 and sorted(res["per_query"]) == ["q5", "q7"]


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
