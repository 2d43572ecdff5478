"""Run under `accelerate launch` by tests/test_train_preference.py: train a recipe through our build_trainer while
recording which rows each rank saw, then save each rank's final trainable weights for comparison."""

import json
import os
import sys
from pathlib import Path

import torch
from accelerate import PartialState

from workbench.jobs import load_recipe
from workbench.training.preference import build_trainer

recipe, out = sys.argv[1], Path(sys.argv[2])
state = PartialState()
overrides = [f"output_dir={out / 'run'}"]
if os.environ.get("WORKBENCH_TEST_MAX_STEPS"):
    overrides.append(f"optim.max_steps={os.environ['WORKBENCH_TEST_MAX_STEPS']}")
cfg = load_recipe(recipe, overrides)
trainer = build_trainer(cfg, out / "run")
seen = []
collate = trainer.data_collator


def recording_collator(examples):
    seen.extend(json.dumps(e["prompt_ids"]) for e in examples)
    return collate(examples)


trainer.data_collator = recording_collator
trainer.train()
weights = {n: p.detach().cpu() for n, p in trainer.accelerator.unwrap_model(trainer.model).named_parameters()
           if p.requires_grad}
torch.save(weights, out / f"weights-rank{state.process_index}.pt")
(out / f"seen-rank{state.process_index}.json").write_text(json.dumps(seen))
print(f"rank {state.process_index}/{state.num_processes} steps={trainer.state.global_step}")
