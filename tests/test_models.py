"""The model registry: defaults, tiny models, clear errors; the real defaults load offline."""

import hashlib
import json
from pathlib import Path

import pytest

from workbench.models import DEFAULTS, ModelNotFoundError, resolve_model

from conftest import run_cli


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_models_cli_lists_both_defaults_available():
    rows = json.loads(run_cli("models", "--json").stdout)
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) >= {"smollm2-135m-instruct", "minilm-l6", "tiny-llama", "tiny-bert"}
    for name in ("smollm2-135m-instruct", "minilm-l6"):
        assert by_name[name]["status"].startswith("available"), by_name[name]


def test_unknown_model_gives_one_clear_error():
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model("no-such-model")
    assert "not a default" in str(e.value) and "smollm2-135m-instruct" in str(e.value)


def test_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_uncached_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="not in the Hugging Face cache while offline"):
        resolve_model("someone/not-cached-model-xyz")


def test_tiny_llama_is_deterministic_and_vllm_compatible(tmp_path, monkeypatch, tiny_llama):
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(tiny_llama)
    assert cfg.head_dim >= 32, "vLLM's CPU attention needs head_dim >= 32"
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    rebuilt = Path(resolve_model("tiny-llama"))
    assert rebuilt != Path(tiny_llama)
    assert _sha(rebuilt / "model.safetensors") == _sha(Path(tiny_llama) / "model.safetensors")
    tok = AutoTokenizer.from_pretrained(rebuilt)
    text = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert tok.decode(tok("What is 2 + 3?")["input_ids"]) == "What is 2 + 3?"


def test_tiny_bert_encodes(tiny_bert):
    from sentence_transformers import SentenceTransformer

    emb = SentenceTransformer(tiny_bert, device="cpu").encode(["a query about bones", "another text"])
    assert emb.shape == (2, 32)


@pytest.mark.slow
def test_smollm2_default_loads_offline_and_generates():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model("smollm2-135m-instruct")
    assert (Path(path) / "model.safetensors").exists()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert tok.eos_token == "<|im_end|>"
    enc = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text, text


def test_minilm_default_embeds():
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve_model("minilm-l6"), device="cpu")
    emb = model.encode(["A cat sits on the mat.", "A kitten rests on a rug.", "Stock markets fell sharply."],
                       normalize_embeddings=True)
    assert emb.shape == (3, 384)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


def test_every_default_has_a_source_and_hint():
    for m in DEFAULTS.values():
        assert m.source and m.install_hint
