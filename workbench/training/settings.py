"""Config sections shared by every trainer (preference and embedding): optimisation, checkpoints, LoRA."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class OptimConfig:
    """Maps onto transformers' TrainingArguments; anything else goes through ``extra``."""

    max_steps: int = -1  # -1: use num_train_epochs
    num_train_epochs: float = 1.0
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-6
    lr_scheduler_type: str = "linear"
    warmup_steps: float = 0  # int: steps; float in [0, 1): a ratio of total steps (transformers 5)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = 1
    save_steps: int = 50  # checkpoint every N steps (resume point)
    save_total_limit: int | None = 2
    eval_steps: int | None = None  # None: no evaluation during training
    bf16: Literal["auto", True, False] = "auto"  # auto: bf16 only where the hardware supports it
    gradient_checkpointing: bool = False
    report_to: list[str] = field(default_factory=list)  # tensorboard, trackio, wandb: passed through
    extra: dict[str, Any] = field(default_factory=dict)  # any other TrainingArguments/TRL config field

    def validate(self):
        if self.max_steps == 0:
            raise ValueError("max_steps must be > 0, or -1 to train for num_train_epochs")
        if self.save_steps < 1:
            raise ValueError("save_steps must be >= 1")

    def use_bf16(self) -> bool:
        if self.bf16 != "auto":
            return bool(self.bf16)
        import torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()

    def training_args(self, output_dir: str, seed: int) -> dict:
        args = dict(output_dir=output_dir, seed=seed, data_seed=seed, max_steps=self.max_steps,
                    num_train_epochs=self.num_train_epochs,
                    per_device_train_batch_size=self.per_device_train_batch_size,
                    per_device_eval_batch_size=self.per_device_eval_batch_size,
                    gradient_accumulation_steps=self.gradient_accumulation_steps, learning_rate=self.learning_rate,
                    lr_scheduler_type=self.lr_scheduler_type, warmup_steps=self.warmup_steps,
                    weight_decay=self.weight_decay, max_grad_norm=self.max_grad_norm, logging_steps=self.logging_steps,
                    save_strategy="steps", save_steps=self.save_steps, save_total_limit=self.save_total_limit,
                    eval_strategy="steps" if self.eval_steps else "no", eval_steps=self.eval_steps,
                    bf16=self.use_bf16(), gradient_checkpointing=self.gradient_checkpointing,
                    report_to=self.report_to or "none", disable_tqdm=False)
        args.update(self.extra)
        return args


@dataclass
class LoraConfig:
    """LoRA through PEFT; ``quantization`` turns it into QLoRA through bitsandbytes (needs a CUDA GPU)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"
    quantization: Literal["none", "4bit", "8bit"] = "none"

    def peft_config(self, task_type: str = "CAUSAL_LM"):
        from peft import LoraConfig as PeftLora

        return PeftLora(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                        target_modules=self.target_modules, task_type=task_type)

    def quantization_config(self):
        if self.quantization == "none":
            return None
        import torch
        from transformers import BitsAndBytesConfig

        if self.quantization == "4bit":
            return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16)
        return BitsAndBytesConfig(load_in_8bit=True)
