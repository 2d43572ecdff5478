"""List-wise embedding training on tiny-bert: data loading and errors, collation, each loss moving the encoder, the
full job through SentenceTransformerTrainer (eval, metrics, saved model), resume after a crash, LoRA, recipes."""

import json
from pathlib import Path

import pytest
import yaml

from workbench.config import RecipeError, build
from workbench.errors import DataError
from workbench.training.embedding import LOSS_NAMES, ListwiseTrainConfig
from workbench.training.listwise_data import (ListwiseDataCollator, ListwiseDataConfig, holdout_split,
                                              infonce_columns, load_lists)

from conftest import FIXTURES, REPO

TINY = FIXTURES / "listwise_tiny"
TINY_RECIPE = REPO / "recipes" / "tiny" / "listwise.yaml"


def tiny_cfg(tmp_path: Path, **over) -> ListwiseTrainConfig:
    data = yaml.safe_load(TINY_RECIPE.read_text())
    data["data"]["path"] = str(TINY / "documents")
    data["output_dir"] = str(tmp_path / "run")
    for key, value in over.items():
        node = data
        *parents, last = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return build(ListwiseTrainConfig, data, str(TINY_RECIPE))


# ----------------------------------------------------------------------------------------------- data


def test_fixture_loads_the_same_through_column_map_and_from_shards():
    shards = load_lists(ListwiseDataConfig(path=str(TINY / "documents")))
    jsonl = load_lists(ListwiseDataConfig(path=str(TINY / "rows.jsonl"),
                                          column_map={"query": "question", "docs": "passages", "grades": "labels"}))
    assert [(r.query, r.docs, r.grades) for r in shards] == [(r.query, r.docs, r.grades) for r in jsonl]
    assert len(shards) == 8 and {len(r.docs) for r in shards} == {3, 4, 5}
    assert "rows.jsonl:3" in jsonl[2].where


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("row, message", [
    ({"query": "q", "docs": ["a", "b"], "grades": [3, 5]}, "field 'grades'[1] = 5 is outside the grade scale [0, 3]"),
    ({"query": "q", "docs": ["a", "b"], "grades": [3]}, "one grade per document: 2 documents, grades: 1"),
    ({"query": " ", "docs": ["a"], "grades": [3]}, "field 'query' (role 'query') is empty"),
    ({"query": "q", "docs": "a", "grades": [3]}, "field 'docs' (role 'docs') must be a list of strings"),
    ({"query": "q", "docs": ["a"], "grades": ["high"]}, "field 'grades'[0] is 'high', not a number"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, row, message):
    good = {"query": "fine", "docs": ["x"], "grades": [1]}
    path = write_jsonl(tmp_path / "d.jsonl", [good, row])
    with pytest.raises(DataError) as e:
        load_lists(ListwiseDataConfig(path=str(path)))
    assert f"{path}:2: " in str(e.value) and message in str(e.value)


def test_missing_column_unfinished_job_and_empty_documents(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", [{"q": "x", "docs": ["a"], "grades": [1]}])
    with pytest.raises(DataError, match=r"column 'query' for role 'query' not found.*\['docs', 'grades', 'q'\]"
                                        r".*data.column_map.query"):
        load_lists(ListwiseDataConfig(path=str(path)))
    unfinished = tmp_path / "documents"
    unfinished.mkdir()
    (unfinished / "shard-00000.parquet").write_bytes((TINY / "documents" / "shard-00000.parquet").read_bytes())
    with pytest.raises(Exception, match="no manifest.json: the list-wise data job there has not finished"):
        load_lists(ListwiseDataConfig(path=str(tmp_path)))  # the run folder stands for its documents/ output
    path = write_jsonl(tmp_path / "e.jsonl", [{"query": "x", "docs": ["a", " "], "grades": [1, 0]},
                                              {"query": "y", "docs": [""], "grades": [2]}])
    rows = load_lists(ListwiseDataConfig(path=str(path)))
    assert [(r.query, r.docs) for r in rows] == [("x", ["a"])]
    assert "dropped 2 empty documents and 1 rows left with none" in capsys.readouterr().err


def test_grade_scale_is_configurable_and_lists_can_be_capped(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"query": "x", "docs": list("abcdef"), "grades": [0, 1, 4, 2, 0, 1]}])
    with pytest.raises(DataError, match="outside the grade scale"):
        load_lists(ListwiseDataConfig(path=str(path)))
    rows = load_lists(ListwiseDataConfig(path=str(path), grade_max=4, relevant_min_grade=3, max_docs=3))
    assert len(rows[0].docs) == 3 and "c" in rows[0].docs  # the top-graded document always stays


def test_holdout_and_infonce_binarisation():
    rows = load_lists(ListwiseDataConfig(path=str(TINY / "documents")))
    train, held = holdout_split(rows, 0.25, seed=0)
    assert len(held) == 2 and len(train) == 6 and not {r.query for r in train} & {r.query for r in held}
    assert holdout_split(rows, 0.25, seed=0) == (train, held)
    cols, dropped = infonce_columns(rows, relevant_min_grade=2, num_negatives=2)
    # every fixture list has a document >= 2; the 3-document lists with one grade-2+ document have 2 below it
    assert dropped == 0 and len(cols["query"]) == 8
    t1 = cols["query"].index("does vitamin d improve bone density")
    assert cols["positive"][t1].startswith("Vitamin D supplementation")  # grade 3
    assert cols["negative_1"][t1].startswith("Vitamin D is made")  # grade 1 (hardest below 2) before grade 0
    _, dropped = infonce_columns(rows, relevant_min_grade=2, num_negatives=3)
    assert dropped == 6  # only t3 (five documents, three below 2) and t8 (three below 2) keep three negatives


def test_collator_pads_grades_and_flattens_only_real_documents(tiny_bert):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(tiny_bert)
    rows = load_lists(ListwiseDataConfig(path=str(TINY / "documents")))[:3]  # lists of 4, 3, 5 documents
    collate = ListwiseDataCollator(model.preprocess, prompts={"query": "query: "})
    batch = collate([{"query": r.query, "docs": r.docs, "grades": r.grades} for r in rows])
    assert batch["label"].shape == (3, 5)
    assert batch["label"].isnan().sum(dim=1).tolist() == [1, 2, 0]
    assert batch["query_input_ids"].shape[0] == 3 and batch["docs_input_ids"].shape[0] == 12
    first = model.tokenizer.decode(batch["query_input_ids"][0], skip_special_tokens=True)
    assert first.startswith("query")


# ----------------------------------------------------------------------------------------------- losses on a model


@pytest.mark.parametrize("loss_name", LOSS_NAMES)
def test_each_loss_changes_the_encoder_in_two_steps(tiny_bert, loss_name):
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

    from workbench.training.embedding import ListwiseLossConfig, build_loss

    torch.manual_seed(0)
    model = SentenceTransformer(tiny_bert)
    rows = load_lists(ListwiseDataConfig(path=str(TINY / "documents")))
    loss = build_loss(ListwiseLossConfig(name=loss_name, temperature=0.05), model)
    if loss_name == "infonce":
        cols, _ = infonce_columns(rows, 2, 2)
        feats = [{k: cols[k][i] for k in cols} for i in range(len(cols["query"]))]
        collate = SentenceTransformerDataCollator(preprocess_fn=model.preprocess)
    else:
        feats = [{"query": r.query, "docs": r.docs, "grades": r.grades} for r in rows]
        collate = ListwiseDataCollator(model.preprocess)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # No weight decay: AdamW's default 0.01 moves every non-zero parameter by lr * 0.01 * p whatever the gradient, so
    # a loss whose gradient never reached the encoder (all zeros) would pass the check below.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    for batch_rows in (feats[:4], feats[4:]):
        batch = collate(batch_rows)
        # as SentenceTransformerTrainer.collect_features splits a batch: one feature dict per text column
        prefixes = [k[:-len("input_ids")] for k in batch if k.endswith("_input_ids")]
        features = [{k[len(p):]: v for k, v in batch.items() if k.startswith(p)} for p in prefixes]
        value = loss(features, batch.get("label"))
        assert torch.isfinite(value)
        opt.zero_grad()
        value.backward()
        opt.step()
    # Every parameter the loss reaches moves: all but BERT's pooler, which mean pooling never uses.
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert all(".pooler." in n for n in unchanged), f"{loss_name}: these parameters did not move: {unchanged}"


# ----------------------------------------------------------------------------------------------- the job


def test_train_job_evaluates_logs_saves_a_loadable_model_and_is_done_on_rerun(tmp_path):
    from sentence_transformers import SentenceTransformer

    from workbench.training.embedding import run

    cfg = tiny_cfg(tmp_path)
    summary = run(cfg)
    run_dir = tmp_path / "run"
    assert summary["global_step"] == 2 and summary["loss"] == "ws2" and 0 <= summary["ndcg@10"] <= 1
    assert json.loads((run_dir / "run.json").read_text())["status"] == "done"
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(m.get("step") == 0 and "eval_heldout_cosine_ndcg@10" in m for m in lines)  # before training
    assert [m["step"] for m in lines if "loss" in m] == [1, 2]
    assert any("eval_loss" in m for m in lines)
    model = SentenceTransformer(str(run_dir / "model"))
    assert model.encode(["a query"]).shape[0] == 1
    assert not (run_dir / "model" / "adapter_config.json").exists()
    again = run(cfg)  # finished, same config: nothing to redo
    assert again == summary


def test_resume_after_a_crash_continues_from_the_last_checkpoint(tmp_path):
    from transformers import TrainerCallback

    from workbench.training.embedding import run

    class Crash(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise KeyboardInterrupt("simulated kill after checkpoint-2")

    cfg = tiny_cfg(tmp_path, optim__max_steps=4, eval=None)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, callbacks=[Crash()])
    run_dir = tmp_path / "run"
    assert not (run_dir / "run.json").exists() and (run_dir / "checkpoints" / "checkpoint-2").is_dir()
    summary = run(cfg)
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["global_step"] == 4
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    resume_at = next(i for i, m in enumerate(lines) if m.get("event") == "resume")
    assert [m["step"] for m in lines[:resume_at] if "loss" in m] == [1, 2]
    assert [m["step"] for m in lines[resume_at:] if "loss" in m] == [3, 4]  # steps 1-2 are not redone


def test_lora_infonce_run_saves_a_merged_plain_model(tmp_path, tiny_bert):
    import torch
    from sentence_transformers import SentenceTransformer

    from workbench.training.embedding import run

    cfg = tiny_cfg(tmp_path, loss__name="infonce", lora={"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
                   eval__at_start=False, optim__max_steps=1, optim__learning_rate=0.05)
    summary = run(cfg)
    assert summary["global_step"] == 1
    saved = tmp_path / "run" / "model"
    assert not (saved / "adapter_config.json").exists()
    trained, base = SentenceTransformer(str(saved)), SentenceTransformer(tiny_bert)
    sd_t, sd_b = trained.state_dict(), base.state_dict()
    assert sd_t.keys() == sd_b.keys()  # a plain encoder: no lora_A/lora_B left
    moved = [k for k in sd_b if not torch.equal(sd_t[k], sd_b[k])]
    assert moved and all("query" in k or "value" in k for k in moved)  # only the LoRA targets changed


# ----------------------------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("path", sorted((REPO / "recipes" / "listwise").glob("*.yaml")) + [TINY_RECIPE],
                         ids=lambda p: p.name)
def test_recipes_build_strictly(path):
    rel = str(path.relative_to(REPO))
    assert f"# Launch: workbench train --config {rel}" in path.read_text().splitlines()[0]
    data = yaml.safe_load(path.read_text())
    cfg = build(ListwiseTrainConfig, data, rel)
    assert cfg.job == "train" and cfg.method == "listwise" and cfg.run_name


def test_recipe_errors_name_the_key():
    data = yaml.safe_load(TINY_RECIPE.read_text())
    data["loss"]["name"] = "wasserstein"
    with pytest.raises(RecipeError, match="loss.name: expected one of .*'ws2' .*'infonce', got 'wasserstein'"):
        build(ListwiseTrainConfig, data, "r.yaml")
    data["loss"]["name"] = "ws2"
    data["loss"]["options"] = {"mu": 5.0}  # lambdaloss's option, not ws2's
    with pytest.raises(RecipeError, match=r"options \['mu'\] are not options of loss 'ws2'; its options: none"):
        build(ListwiseTrainConfig, data, "r.yaml")
    data["loss"] = {"name": "lambdaloss", "mu": 5.0}  # the pre-0.2 key still works, with a deprecation warning
    with pytest.warns(FutureWarning, match="loss.mu is deprecated .* use loss.options.mu"):
        assert build(ListwiseTrainConfig, data, "r.yaml").loss.options == {"mu": 5.0}
    data["loss"] = {"name": "ws2"}
    data["data"]["column_map"] = {"passage": "x"}
    with pytest.raises(RecipeError, match="unknown role"):
        build(ListwiseTrainConfig, data, "r.yaml")
