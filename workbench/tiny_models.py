"""Tiny random models for tests and smoke recipes, built byte-identically on every machine, thread count and run.

No downloads. ``tiny-llama``'s BPE tokenizer is trained here on a small synthetic corpus (English words about maths
and retrieval, arithmetic, digits): the BPE trainer is deterministic (its alphabet ids are assigned in sorted order
and ties between merges go to the lower pair of ids). ``tiny-bert``'s WordPiece vocabulary is not trained: the
WordPiece trainer gave another vocabulary (other merges, other ids) on most builds -- its ``##`` pieces get their ids
in the order it meets them while iterating a hash map -- so it is written out instead, in sorted order, from the
characters and the words of its corpus.

The weights do not come from torch's initialisers either: ``normal_`` has a vectorised AVX2 kernel and a scalar one
that give different floats, so the same seed gave different weights on machines with and without AVX2 (or with
AVX-512, which takes the scalar path). :func:`_init_weights` draws them from SHAKE-256 with integer arithmetic and
one correctly rounded scaling, the same bits everywhere. ``tests/test_tiny_models_determinism.py`` holds the sha256
of every file; change :data:`BUILD_VERSION` whenever a builder's output changes, so that cached builds are redone.

``tiny-llama`` has head_dim 32 because vLLM's CPU attention needs head_dim >= 32.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import string
from pathlib import Path

# Part of each cached build's marker (workbench.models): a cached folder from another version is rebuilt.
BUILD_VERSION = 2

_WORDS = (
    "the a an of to and in is it that for on with as by at from this be are was what how many much each "
    "number answer question total sum product difference quotient divide multiply add subtract plus minus times "
    "equals result step first then so therefore final think reason solve problem apples books students days hours "
    "dollars cost price paid buys sells gives left more less than twice half three four five six seven eight nine "
    "ten hundred thousand document query relevant irrelevant related passage evidence claim study patients cells "
    "protein gene effect treatment risk increase decrease finance stock market investment bank loan rate interest "
    "search retrieval ranking model data train test score grade judge rubric reasoning consistent correct wrong"
).split()


def _corpus(n_lines: int = 3000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        if i % 3 == 0:
            a, b = rng.randint(0, 999), rng.randint(0, 999)
            op = rng.choice(["+", "-", "*", "/"])
            lines.append(f"What is {a} {op} {b}? The answer is {a + b if op == '+' else a}. #### {b}")
        else:
            lines.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 20))).capitalize() + ".")
    return lines


CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


_BITS = 20  # each draw sums four 20-bit integers: at most 2^22, exact in float32 and float64


def _normal(n: int, std: float, key: str):
    """``n`` float32 draws of mean 0 and standard deviation ``std`` (Irwin-Hall: a sum of four uniforms, within
    3.5 std), a pure function of ``key`` on every machine: the bytes come from SHAKE-256, everything up to the last
    step is integer arithmetic, and the one float step (a product in float64, then float32) is correctly rounded."""
    import numpy as np

    raw = np.frombuffer(hashlib.shake_256(key.encode()).digest(16 * n), dtype="<u4").reshape(n, 4)
    m = 1 << _BITS
    total = (raw >> (32 - _BITS)).astype(np.int64).sum(axis=1) - 2 * (m - 1)  # centred: an integer, |.| < 2^21
    sigma = math.sqrt((m * m - 1) / 3)  # sd of a sum of four uniforms on {0, ..., m - 1}
    return (total.astype(np.float64) * (std / sigma)).astype(np.float32)


def _init_weights(model, key: str) -> None:
    """Re-draw every Linear and Embedding weight of ``model`` with :func:`_normal` (standard deviation
    ``config.initializer_range``, padding rows zero, as Hugging Face's initialisers do), each from its own key
    (``key`` and the parameter's name), so the weights are the same bits on every machine. Every other parameter
    (norm scales, biases) must already be a constant (transformers sets them to 1 or 0); a random one would be
    machine-dependent, so it raises."""
    import torch

    std = float(model.config.initializer_range)
    drawn = set()
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                w = module.weight
                w.copy_(torch.from_numpy(_normal(w.numel(), std, f"workbench-tiny/{key}/{name}.weight")).view_as(w))
                if isinstance(module, torch.nn.Embedding) and module.padding_idx is not None:
                    w[module.padding_idx] = 0
                drawn.add(f"{name}.weight" if name else "weight")
        for name, p in model.named_parameters():
            if name not in drawn and p.numel() and not bool((p == p.reshape(-1)[0]).all()):
                raise RuntimeError(f"{name} is neither a Linear/Embedding weight nor a constant: initialise it "
                                   "here, or it differs between machines")


def build_tiny_llama(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<pad>", model_max_length=1024)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)

    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, max_position_embeddings=1024, tie_word_embeddings=False,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    _init_weights(model, "tiny-llama")
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(out, safe_serialization=True)


_BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_bert_vocab() -> list[str]:
    """tiny-bert's WordPiece vocabulary, in id order: the specials; every ASCII letter, digit and punctuation mark (so
    ASCII text never maps to [UNK]); ``##`` + each letter and digit (word continuations); then every word of its
    corpus, sorted. Built by code, not by the trainer, so the same on every machine."""
    singles = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    pieces = ["##" + c for c in sorted(string.ascii_lowercase + string.digits)]
    words = sorted({w for line in _corpus(seed=1) for w in re.findall(r"[a-z]+", line.lower())} - set(singles))
    return _BERT_SPECIALS + singles + pieces + words


def build_tiny_bert(out: Path) -> None:
    import shutil

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = tiny_bert_vocab()
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(_BERT_SPECIALS)
    cls_id, sep_id = vocab.index("[CLS]"), vocab.index("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    fast = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]", model_max_length=256)
    hf_dir = out / "_hf"
    fast.save_pretrained(hf_dir)
    config = BertConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=256)
    model = BertModel(config)
    _init_weights(model, "tiny-bert")
    model.save_pretrained(hf_dir, safe_serialization=True)

    # Save as a sentence-transformers folder (Transformer -> mean pooling) so it loads without warnings. No model
    # card: sentence-transformers writes one with this machine's Python and torch versions and with similarities
    # computed on the spot (float formatting), none of which is the same on every machine.
    word = Transformer(str(hf_dir), max_seq_length=128)
    pool = Pooling(word.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[word, pool], device="cpu").save(str(out), safe_serialization=True,
                                                                 create_model_card=False)
    shutil.rmtree(hf_dir)
    # The saved __version__ names torch's build ("2.13.0+cpu" here, another suffix on a CUDA machine); keep only the
    # two libraries that are pinned exactly (pyproject.toml). sentence-transformers reads only its own entry.
    st_config = out / "config_sentence_transformers.json"
    cfg = json.loads(st_config.read_text())
    cfg["__version__"] = {k: v for k, v in cfg["__version__"].items() if k in ("sentence_transformers", "transformers")}
    st_config.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    # The tokenizer was saved after a load from _hf, and records how it was loaded: "local_files_only" is true under
    # HF_HUB_OFFLINE=1 (the tests) and false elsewhere. Neither key says anything about the tokenizer itself.
    tok_config = out / "tokenizer_config.json"
    cfg = json.loads(tok_config.read_text())
    for key in ("is_local", "local_files_only"):
        cfg.pop(key, None)
    tok_config.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


TOY_VOCAB = ["<|endoftext|>", "<|im_end|>", "<pad>", "a", "b", "c"]


def build_toy_llama(out: Path, seed: int = 0) -> None:
    """A Llama with a 6-token vocabulary (3 words + BOS, EOS, pad): small enough to enumerate every completion of up to
    3 tokens (156 of them), so exact KLs and exact KL gradients can be computed by brute force in tests.

    The weights are scaled up from the default init so that next-token distributions are far from uniform and two
    toy models (different ``seed``) are measurably apart. head_dim 32 keeps vLLM's CPU attention happy.
    """
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(TOY_VOCAB)}, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<pad>", model_max_length=64)
    fast.save_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(TOY_VOCAB), hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=64, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=1, pad_token_id=2, initializer_range=0.3, torch_dtype="float32")
    model = LlamaForCausalLM(config)
    _init_weights(model, f"toy-llama/{seed}")
    with torch.no_grad():  # EOS as likely as "a" everywhere, so completions of every length 1-3 are common
        model.lm_head.weight[1] = model.lm_head.weight[3]
    model.generation_config.pad_token_id = 2
    model.save_pretrained(out, safe_serialization=True)
