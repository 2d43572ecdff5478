"""`workbench <command>`: parse, load the recipe, call the stage. Nothing else lives here.

Errors the user can fix (bad recipe, bad data, missing model, a finished run in the way) print one line, naming the
file/line/field and the fix, and exit 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys


def _add_recipe_args(p: argparse.ArgumentParser, overwrite: bool = True) -> None:
    p.add_argument("--config", "-c", required=True, help="recipe YAML (see recipes/)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override recipe values")
    if overwrite:
        p.add_argument("--overwrite", action="store_true",
                       help="discard an existing run in the output folder instead of resuming or refusing")


def _add_partition_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rank", type=int, default=None, help="this process's slice (default: accelerate/SLURM env)")
    p.add_argument("--world-size", type=int, default=None, help="number of slices")


def _partition(args):
    from workbench.generation.shards import Partition

    if args.world_size is not None or args.rank is not None:
        if args.world_size is None or args.rank is None or not 0 <= args.rank < args.world_size:
            raise SystemExit("error: --rank and --world-size go together, with 0 <= rank < world-size")
        return Partition(args.rank, args.world_size)
    return Partition.from_env()


def cmd_models(args) -> int:
    from workbench.models import DEFAULTS, model_status

    rows = [model_status(n) for n in DEFAULTS]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    w = max(len(r["name"]) for r in rows)
    print(f"{'name':<{w}}  {'kind':<9}  status / source / path")
    for r in rows:
        print(f"{r['name']:<{w}}  {r['kind']:<9}  {r['status']}\n{'':<{w}}  {'':<9}  source: {r['source']}\n"
              f"{'':<{w}}  {'':<9}  path:   {r['path']}")
    return 0


def cmd_check(args) -> int:
    from workbench.config import dump_yaml, load_recipe

    cfg = load_recipe(args.recipe, args.overrides)
    print(f"# {args.recipe}: valid ({type(cfg).__name__})")
    print(dump_yaml(cfg), end="")
    return 0


def cmd_generate(args) -> int:
    from workbench.config import load_recipe
    from workbench.generation import documents, rollouts
    from workbench.generation.shards import Partition

    if args.what == "merge":
        cfg = load_recipe(args.config, args.overrides)
        mod = {"rollouts": rollouts, "documents": documents}.get(cfg.job)
        if mod is None:
            raise SystemExit(f"error: merge works on rollouts/documents recipes, not job: {cfg.job}")
        result = mod.run(cfg, part=Partition.merge_only())
        if not result.get("complete"):
            from workbench.errors import WorkbenchError

            raise WorkbenchError(f"{cfg.run_dir()}: shards are missing; rerun the ranks that have not finished")
        return 0
    cfg = load_recipe(args.config, args.overrides, job=args.what)
    mod = rollouts if args.what == "rollouts" else documents
    mod.run(cfg, overwrite=args.overwrite, part=_partition(args))
    return 0


def cmd_verify(args) -> int:
    from workbench.config import load_recipe
    from workbench.verifiers import job

    job.run(load_recipe(args.config, args.overrides, job="verify"), overwrite=args.overwrite)
    return 0


def cmd_pairs(args) -> int:
    from workbench.config import load_recipe
    from workbench.data import pairs

    pairs.run(load_recipe(args.config, args.overrides, job="pairs"), overwrite=args.overwrite)
    return 0


def cmd_train(args) -> int:
    from workbench.config import load_recipe

    cfg = load_recipe(args.config, args.overrides, job="train")
    if cfg.method == "listwise":
        from workbench.training import embedding as trainer
    else:
        from workbench.training import preference as trainer
    trainer.run(cfg, overwrite=args.overwrite)
    return 0


def cmd_eval(args) -> int:
    from workbench.config import load_recipe

    if args.what == "reasoning":
        import eval.reasoning as stage
    else:
        import eval.retrieval as stage
    stage.run(load_recipe(args.config, args.overrides, job=f"eval_{args.what}"), overwrite=args.overwrite)
    return 0


def cmd_report(args) -> int:
    from eval.compare import report

    out = args.out or (args.runs[0] if len(args.runs) == 1 else "reports/comparison")
    path = report(args.runs, out)
    print(f"report: {path}")
    return 0


def cmd_loop(args) -> int:
    from workbench import loop
    from workbench.config import load_recipe

    loop.run(load_recipe(args.config, args.overrides, job="loop"), overwrite=args.overwrite)
    return 0


def cmd_quickstart(args) -> int:
    from workbench import quickstart

    quickstart.run(args.out, args.part, reduced=args.reduced)
    return 0


def cmd_lists(args) -> int:
    from workbench.config import load_recipe
    from workbench.data import lists

    lists.run(load_recipe(args.config, args.overrides, job="lists"), overwrite=args.overwrite)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description="contrast-workbench: generate -> verify -> pairs/lists "
                                     "-> train -> eval, for preference optimisation and contrastive fine-tuning.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = sub.add_parser("models", help="list the embedded default models, their source, cache path and status")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("check", help="validate a recipe without running it and print the resolved config")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("generate", help="generation jobs: policy rollouts, synthetic graded documents")
    gsub = p.add_subparsers(dest="what", required=True, metavar="job")
    for name, help_ in [("rollouts", "n samples per prompt -> sharded Parquet"),
                        ("documents", "SyCL graded-relevance documents (3/2/1/0) per query"),
                        ("merge", "check a multi-rank job's shards and write its manifest")]:
        g = gsub.add_parser(name, help=help_)
        _add_recipe_args(g, overwrite=name != "merge")
        if name != "merge":
            _add_partition_args(g)
        g.set_defaults(func=cmd_generate)

    p = sub.add_parser("verify", help="score rollouts with a verifier (math, reasoning_gym, judge, rollout_aware)")
    _add_recipe_args(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("pairs", help="build TRL preference pairs from verdicts (with prompt pruning)")
    _add_recipe_args(p)
    p.set_defaults(func=cmd_pairs)

    p = sub.add_parser("lists", help="list-wise rows from graded documents: label calibration, dual consistency "
                                     "filtering, hard-negative mining")
    _add_recipe_args(p)
    p.set_defaults(func=cmd_lists)

    p = sub.add_parser("train", help="train a policy (dpo, hypo, grpo) or an embedding model (listwise); also under "
                                     "`accelerate launch -m workbench train`")
    _add_recipe_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluation harness: retrieval (BEIR-style) and reasoning (accuracy, pass@k, KL)")
    esub = p.add_subparsers(dest="what", required=True, metavar="kind")
    for name, help_ in [("retrieval", "nDCG/Recall/MAP/MRR via pytrec_eval on BEIR-format data"),
                        ("reasoning", "accuracy, pass@k, maj@k, mean length and KL to a reference model")]:
        e = esub.add_parser(name, help=help_)
        _add_recipe_args(e)
        e.set_defaults(func=cmd_eval)

    p = sub.add_parser("loop", help="VerIPO's iterative loop: GRPO -> rollouts -> rollout-aware verify -> pairs -> "
                                    "DPO/HyPO -> eval, repeated")
    _add_recipe_args(p)
    p.set_defaults(func=cmd_loop)

    p = sub.add_parser("quickstart", help="the whole workbench on the embedded defaults, offline, on CPU "
                                          "(policy: rollouts -> pairs -> DPO/HyPO; retrieval: SyCL docs -> ws2/infonce)")
    p.add_argument("--out", default="runs/quickstart", help="output folder (default runs/quickstart)")
    p.add_argument("--part", choices=["policy", "retrieval", "all"], default="all")
    p.add_argument("--reduced", action="store_true", help="tiny sizes on the same models (the end-to-end test)")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("report", help="compare runs side by side: markdown table + PNG plots (metrics, training "
                                      "curves, per-iteration summaries)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default=None, help="output folder (default: the run itself, or reports/comparison)")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from workbench.errors import WorkbenchError

    try:
        return args.func(args) or 0
    except WorkbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
