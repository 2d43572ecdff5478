"""Trainers: preference (TRL DPO, HyPO, GRPO) and list-wise embedding (sentence-transformers)."""
