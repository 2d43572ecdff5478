"""`workbench generate documents` through the real CLI on tiny-llama: grades 3/2/1/0 plus real data, per query."""

import json

import pytest

from conftest import FIXTURES, needs_vllm, run_cli


def load(run_dir):
    import datasets

    return datasets.load_dataset("parquet", data_files=str(run_dir / "documents" / "shard-*.parquet"), split="train")


@needs_vllm
def test_tiny_documents_recipe_on_vllm(tmp_path):
    run_cli("generate", "documents", "--config", "recipes/tiny/documents.yaml", f"output_dir={tmp_path / 'run'}")
    ds = load(tmp_path / "run")
    assert ds.column_names == ["query_id", "query", "docs", "grades", "provenance"]
    # the tiny BEIR train split judges q1..q4
    assert sorted(ds["query_id"]) == ["q1", "q2", "q3", "q4"]
    for row in ds:
        assert row["grades"][:4] == [3, 2, 1, 0]
        assert row["provenance"][:4] == ["synthetic:tiny-llama"] * 4
        assert row["provenance"][4:] == ["real:positive", "real:bm25"]
        assert row["grades"][4:] == [3, 1]
        assert len(row["docs"]) == len(row["grades"]) == len(row["provenance"])
    q1 = next(r for r in ds if r["query_id"] == "q1")
    assert "Vitamin D increases calcium absorption" in q1["docs"][4]  # the qrels positive (grade 2 > 0)
    assert "Vitamin D increases" not in q1["docs"][5]  # the BM25 negative excludes the positive
    manifest = json.loads((tmp_path / "run" / "documents" / "manifest.json").read_text())
    assert manifest["levels"] == [3, 2, 1, 0] and manifest["num_rows"] == 4


def test_documents_on_hf_with_jsonl_queries_and_custom_prompts(tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_text('{"question": "What is BM25?", "qid": "a"}\n{"question": "What is a dense retriever?", "qid": "b"}\n')
    run_cli("generate", "documents", "--config", "recipes/tiny/documents.yaml", f"output_dir={tmp_path / 'run'}",
            "queries.kind=jsonl", f"queries.path={q}", "queries.column_map={query: question, id: qid}", "real=null",
            "backend.backend=hf", "levels=[3, 0]", "level_prompts={3: 'Answer: {query}'}")
    ds = load(tmp_path / "run")
    assert sorted(ds["query_id"]) == ["a", "b"]
    assert all(r["grades"] == [3, 0] for r in ds)


def test_missing_query_column(tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_text('{"text": "x"}\n')
    proc = run_cli("generate", "documents", "--config", "recipes/tiny/documents.yaml", f"output_dir={tmp_path / 'r'}",
                   "queries.kind=jsonl", f"queries.path={q}", check=False)
    assert proc.returncode == 2 and "role 'query' not found" in proc.stderr and "['text']" in proc.stderr


def test_level_prompt_must_contain_query(tmp_path):
    proc = run_cli("check", "recipes/tiny/documents.yaml", "level_prompts={3: 'no placeholder'}", check=False)
    assert proc.returncode == 2 and "level_prompts.3 must contain {query}" in proc.stderr


@pytest.mark.parametrize("content, expect", [
    ("query-id\tcorpus-id\n", "expected the header"),
    ("query-id\tcorpus-id\tscore\nq1\td1\n", "expected 3 tab-separated columns"),
    ("query-id\tcorpus-id\tscore\nq1\td1\thigh\n", "field 'score' must be an integer"),
])
def test_broken_qrels(tmp_path, content, expect):
    import shutil

    from workbench.store.beir import load_qrels
    from workbench.errors import DataError

    folder = tmp_path / "beir"
    shutil.copytree(FIXTURES / "beir_tiny", folder)
    (folder / "qrels" / "train.tsv").write_text(content)
    with pytest.raises(DataError, match=expect):
        load_qrels(folder, "train")
