"""`workbench train` with ``method: listwise``: fine-tune an embedding model on graded lists (SyCL-style).

Reads top to bottom: open the run folder (resume / refuse / nothing to redo) -> load and validate the list-wise rows
-> hold out queries for evaluation -> load the encoder (any sentence-transformers or Hugging Face encoder; optional
LoRA) -> build the loss (``ws2``, ``listnet``, ``lambdaloss``, ``graded_infonce`` from :mod:`workbench.losses`, or the
binary ``infonce`` baseline, sentence-transformers' ``MultipleNegativesRankingLoss`` on binarised lists) -> train with
``SentenceTransformerTrainer``, checkpointing every ``save_steps`` and resuming from the last complete checkpoint on
rerun -> evaluate nDCG@10 on the held-out queries (before, during, after) -> save ``<run>/model``, a standard
sentence-transformers folder (LoRA merged in), atomically -> mark the run done.

Run folder: ``config.yaml``, ``env.json``, ``metrics.jsonl`` (every trainer log line and evaluation, with its step),
``checkpoints/checkpoint-<step>/`` (trainer state, for resume), ``model/``, ``run.json`` (summary, written last).

Evaluation: ``InformationRetrievalEvaluator`` over the held-out lists -- each held-out query against every held-out
document, relevant = grade >= ``data.relevant_min_grade`` (binary nDCG@10; 2 matches TREC DL's binary cut-off:
"highly" and "perfectly" relevant). The same threshold binarises lists for the ``infonce`` baseline.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from workbench.errors import DataError
from workbench.config import register_job
from workbench.store.runs import RunConfig
from workbench.training.listwise_data import ListwiseDataConfig
from workbench.training.settings import LoraConfig, OptimConfig

from workbench.losses import listwise as _listwise_losses

# The registry of list-wise losses (their file names) plus the binary baseline: the recipe schema is derived from it.
LOSS_NAMES = (*_listwise_losses.NAMES, "infonce")


@dataclass
class ListwiseLossConfig:
    RENAMED = {"mu": "options.mu", "sigma": "options.sigma"}  # lambdaloss's options, formerly top-level keys

    name: Literal[LOSS_NAMES] = "ws2"  # type: ignore[valid-type]
    temperature: float = 0.05  # s / tau; 0.05 = sentence-transformers' scale 20 for cosine scores
    similarity: Literal["cos", "dot"] = "cos"
    in_batch_negatives: bool = True  # list-wise losses: score every query against every document of the batch
    options: dict[str, Any] = field(default_factory=dict)  # the loss's own keywords, e.g. lambdaloss: {mu, sigma}
    infonce_negatives: int = 2  # infonce: hard negatives per query (documents graded below relevant_min_grade)

    def validate(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.infonce_negatives < 0:
            raise ValueError("infonce_negatives must be >= 0")
        if self.options:
            allowed = () if self.name == "infonce" else _listwise_losses.get(self.name).option_names()
            bad = sorted(set(self.options) - set(allowed))
            if bad:
                raise ValueError(f"options {bad} are not options of loss {self.name!r}; its options: "
                                 f"{list(allowed) or 'none'}")


@dataclass
class ListwiseEvalConfig:
    holdout: float = 0.1  # fraction of distinct queries held out of training (ignored when `path` is set)
    path: str | None = None  # separate list-wise data for evaluation (same column_map and grade scale)
    at_start: bool = True  # evaluate the untrained model first (logged at step 0)
    batch_size: int = 32  # encoding batch size of the nDCG evaluation

    def validate(self):
        if self.path is None and not 0 < self.holdout < 1:
            raise ValueError(f"holdout must be in (0, 1), got {self.holdout}")


@dataclass
class EmbeddingOptimConfig(OptimConfig):
    """The shared optimisation section with embedding defaults. Evaluation runs every ``eval_steps`` (default:
    ``save_steps``) whenever there is held-out data."""

    per_device_train_batch_size: int = 16  # queries per batch, each with its whole list
    per_device_eval_batch_size: int = 16
    learning_rate: float = 2e-5
    warmup_steps: float = 0.05  # a float in [0, 1) is a ratio of total steps
    weight_decay: float = 0.01
    logging_steps: int = 10
    save_steps: int = 100
    max_seq_length: int | None = 256  # tokens per query/document (the encoder's own limit if null)

    def trainer_args(self, output_dir: str, seed: int, evaluate: bool) -> dict:
        """The shared TrainingArguments, with evaluation every ``eval_steps`` (default ``save_steps``) when there
        is held-out data."""
        args = self.training_args(output_dir, seed)
        args.update(logging_first_step=True, eval_strategy="steps" if evaluate else "no",
                    eval_steps=(self.eval_steps or self.save_steps) if evaluate else None)
        args.update(self.extra)
        return args


@register_job("train", method="listwise")
@dataclass
class ListwiseTrainConfig(RunConfig):
    """``job: train`` + ``method: listwise``."""

    method: Literal["listwise"] = "listwise"
    model: str = "minilm-l6"
    query_prompt: str | None = None  # prefixed to queries (e.g. "query: " for E5)
    doc_prompt: str | None = None  # prefixed to documents (e.g. "passage: ")
    data: ListwiseDataConfig = field(default_factory=ListwiseDataConfig)
    loss: ListwiseLossConfig = field(default_factory=ListwiseLossConfig)
    eval: ListwiseEvalConfig | None = field(default_factory=ListwiseEvalConfig)
    optim: EmbeddingOptimConfig = field(default_factory=EmbeddingOptimConfig)
    lora: LoraConfig | None = None  # LoRA on the encoder (peft), merged into <run>/model at the end

    def validate(self):
        if not self.data.path:
            raise ValueError("data.path is required")
        if self.lora is not None and self.lora.quantization != "none":
            raise ValueError("lora.quantization: embedding training supports plain LoRA only (quantization: none)")


def _say(msg: str) -> None:
    print(f"[train listwise] {msg}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------- pieces


def build_loss(cfg: ListwiseLossConfig, model):
    """The loss module for ``cfg.name``: ours for the list-wise losses, sentence-transformers' MNRL for infonce."""
    if cfg.name == "infonce":
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
        from sentence_transformers.util import cos_sim, dot_score

        return MultipleNegativesRankingLoss(model, scale=1.0 / cfg.temperature,
                                            similarity_fct=cos_sim if cfg.similarity == "cos" else dot_score)
    return _listwise_losses.get(cfg.name)(model, temperature=cfg.temperature, similarity=cfg.similarity,
                                          in_batch_negatives=cfg.in_batch_negatives, **cfg.options)


def build_datasets(cfg: ListwiseTrainConfig, train_rows, eval_rows):
    """(train_dataset, eval_dataset or None, dropped rows) in the loss's input format."""
    import datasets

    from workbench.training.listwise_data import infonce_columns, to_dataset

    if cfg.loss.name != "infonce":
        return to_dataset(train_rows), (to_dataset(eval_rows) if eval_rows else None), 0
    cols, dropped = infonce_columns(train_rows, cfg.data.relevant_min_grade, cfg.loss.infonce_negatives)
    if not cols["query"]:
        raise DataError(f"{cfg.data.path}: no list has a document graded >= {cfg.data.relevant_min_grade:g} and "
                        f"{cfg.loss.infonce_negatives} below it, as the infonce baseline needs; lower "
                        "data.relevant_min_grade or loss.infonce_negatives")
    ev = None
    if eval_rows:
        ecols, _ = infonce_columns(eval_rows, cfg.data.relevant_min_grade, cfg.loss.infonce_negatives)
        ev = datasets.Dataset.from_dict(ecols) if ecols["query"] else None
    return datasets.Dataset.from_dict(cols), ev, dropped


def build_evaluator(eval_rows, relevant_min_grade: float, batch_size: int, query_prompt=None, doc_prompt=None):
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    from workbench.training.listwise_data import ir_eval_inputs

    queries, corpus, relevant = ir_eval_inputs(eval_rows, relevant_min_grade)
    if not relevant:
        _say(f"no held-out document is graded >= {relevant_min_grade:g}: nDCG evaluation skipped")
        return None
    return InformationRetrievalEvaluator(queries, corpus, relevant, name="heldout", batch_size=batch_size,
                                         ndcg_at_k=[10], mrr_at_k=[10], accuracy_at_k=[1, 10],
                                         precision_recall_at_k=[10], map_at_k=[100], write_csv=False,
                                         query_prompt=query_prompt, corpus_prompt=doc_prompt)


def merge_lora(model) -> None:
    """Fold LoRA adapters into the base weights and drop them, so the saved folder is a plain model."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        hf = getattr(module, "auto_model", None)
        if hf is None or not getattr(hf, "_hf_peft_config_loaded", False):
            continue
        for name, sub in list(hf.named_modules()):
            if isinstance(sub, BaseTunerLayer):
                sub.merge()
                parent_name, _, attr = name.rpartition(".")
                setattr(hf.get_submodule(parent_name) if parent_name else hf, attr, sub.get_base_layer())
        hf._hf_peft_config_loaded = False
        if hasattr(hf, "peft_config"):
            del hf.peft_config


def save_model_atomically(model, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp))
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def _final_eval(trainer) -> dict:
    """The evaluation at the last step: reuse the trainer's if it just ran one there, else run it now."""
    for entry in reversed(trainer.state.log_history):
        if entry.get("step") != trainer.state.global_step:
            break
        if "eval_loss" in entry or any(k.startswith("eval_heldout") for k in entry):
            return {k: v for k, v in entry.items() if k.startswith("eval_")}
    return trainer.evaluate()


# ----------------------------------------------------------------------------------------------- the job


def run(cfg: ListwiseTrainConfig, overwrite: bool = False, callbacks: list | None = None) -> dict:
    """Train (or resume, or find finished) the run ``cfg`` describes; return its summary.

    ``callbacks``: extra ``transformers.TrainerCallback`` objects (a reporter; a test's simulated crash).
    """
    from workbench.config import to_dict
    from workbench.store.runs import open_run
    from workbench.training.listwise_data import holdout_split, load_lists

    from workbench.models import resolve_model

    # Data and model are checked before the run folder exists: a corrected rerun is not "a different config".
    rows = load_lists(cfg.data, seed=cfg.seed)
    eval_rows = []
    if cfg.eval is not None:
        if cfg.eval.path:
            eval_rows = load_lists(replace(cfg.data, path=cfg.eval.path, size=None, offset=0), seed=cfg.seed)
        else:
            rows, eval_rows = holdout_split(rows, cfg.eval.holdout, seed=cfg.seed)
    resolve_model(cfg.model)
    run_ = open_run(cfg.run_dir(), to_dict(cfg), overwrite=overwrite)
    if run_.done:
        return run_.status().get("summary", {})
    o = cfg.optim
    _say(f"{len(rows)} training lists, {len(eval_rows)} held-out lists; loss {cfg.loss.name}")

    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from transformers import set_seed

    from workbench.training.callbacks import MetricsJsonlCallback, train_loss
    from workbench.training.checkpoints import CompleteCheckpointCallback, resume_point, train
    from workbench.training.listwise_data import ListwiseDataCollator

    set_seed(cfg.seed)
    model = SentenceTransformer(resolve_model(cfg.model))
    if o.max_seq_length:
        model.max_seq_length = o.max_seq_length
    if cfg.lora is not None:
        model.add_adapter(cfg.lora.peft_config(task_type="FEATURE_EXTRACTION"))

    train_ds, eval_ds, dropped = build_datasets(cfg, rows, eval_rows)
    if dropped:
        _say(f"infonce: {dropped} lists dropped (no document >= {cfg.data.relevant_min_grade:g}, or fewer than "
             f"{cfg.loss.infonce_negatives} below it); {len(train_ds)} remain")
    loss = build_loss(cfg.loss, model)
    evaluator = (build_evaluator(eval_rows, cfg.data.relevant_min_grade, cfg.eval.batch_size, cfg.query_prompt,
                                 cfg.doc_prompt) if eval_rows else None)
    doc_columns = [c for c in train_ds.column_names if c not in ("query", "grades")]  # docs, or positive/negative_*
    prompts = {**({"query": cfg.query_prompt} if cfg.query_prompt else {}),
               **({c: cfg.doc_prompt for c in doc_columns} if cfg.doc_prompt else {})}
    # infonce uses sentence-transformers' own collator (prompts through the training arguments); the list-wise
    # losses use ours.
    collator = None if cfg.loss.name == "infonce" else ListwiseDataCollator(model.preprocess, prompts or None)

    do_eval = evaluator is not None or eval_ds is not None
    args = SentenceTransformerTrainingArguments(
        **o.trainer_args(str(run_.path / "checkpoints"), cfg.seed, do_eval),
        prompts=(prompts or None) if collator is None else None)
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, loss=loss, evaluator=evaluator,
        data_collator=collator,
        callbacks=[MetricsJsonlCallback(run_), CompleteCheckpointCallback(run_), *(callbacks or [])])

    resume = resume_point(run_)  # metrics.jsonl cut back to the checkpoint (emptied when starting over)
    if resume:
        _say(f"resuming from {resume}")
        run_.log_metrics({"event": "resume", "checkpoint": Path(resume).name})
    elif evaluator is not None and cfg.eval.at_start:
        before = evaluator(model)
        run_.log_metrics({f"eval_{k}": v for k, v in before.items()}, step=0)
        _say(f"before training: held-out nDCG@10 = {before[evaluator.primary_metric]:.4f}")

    result = train(trainer, resume)  # trainer.train, but never past max_steps on a resume
    final = _final_eval(trainer) if do_eval else {}
    if cfg.lora is not None:
        merge_lora(model)
    save_model_atomically(model, run_.path / "model")

    summary = {"loss": cfg.loss.name, "train_rows": len(train_ds), "heldout_lists": len(eval_rows),
               "global_step": trainer.state.global_step, "train_loss": train_loss(trainer.state),
               "train_runtime_s": result.metrics.get("train_runtime"), "resumed_from": resume,
               "model": str(run_.path / "model"), **{k: v for k, v in final.items() if k.startswith("eval_")}}
    if evaluator is not None:
        # The evaluator names its primary metric on its first call; a rerun resumed from the last checkpoint (killed
        # while saving the model) never calls it and reads the final evaluation from the log. Its one score function
        # is the model's similarity, so the name is known without the call.
        primary = evaluator.primary_metric or (f"{evaluator.name}_{model.similarity_fn_name}_ndcg@"
                                               f"{max(evaluator.ndcg_at_k)}")
        summary["ndcg@10"] = final.get(f"eval_{primary}")
    run_.mark_done(summary)
    _say(f"done: {run_.path / 'model'}" + (f" (held-out nDCG@10 {summary['ndcg@10']:.4f})"
                                           if summary.get("ndcg@10") is not None else ""))
    return summary
