"""Tiny random models for tests and smoke recipes, built deterministically with locally trained tokenizers.

No downloads: the tokenizers are trained here on a small synthetic corpus (English words about maths and retrieval,
arithmetic, digits), and the weights come from a fixed seed. ``tiny-llama`` has head_dim 32 because vLLM's CPU
attention needs head_dim >= 32.
"""

from __future__ import annotations

import random
from pathlib import Path

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


def build_tiny_llama(out: Path) -> None:
    import torch
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

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, max_position_embeddings=1024, tie_word_embeddings=False,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(out, safe_serialization=True)


def build_tiny_bert(out: Path) -> None:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(_corpus(seed=1), trainer=trainers.WordPieceTrainer(
        vocab_size=600, special_tokens=specials, show_progress=False))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    fast = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]", model_max_length=256)
    hf_dir = out / "_hf"
    fast.save_pretrained(hf_dir)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=256)
    BertModel(config).save_pretrained(hf_dir, safe_serialization=True)

    # Save as a sentence-transformers folder (Transformer -> mean pooling) so it loads without warnings.
    word = Transformer(str(hf_dir), max_seq_length=128)
    pool = Pooling(word.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[word, pool], device="cpu").save(str(out), safe_serialization=True)
    import shutil

    shutil.rmtree(hf_dir)


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
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(TOY_VOCAB), hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=64, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=1, pad_token_id=2, initializer_range=0.3, torch_dtype="float32")
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # EOS as likely as "a" everywhere, so completions of every length 1-3 are common
        model.lm_head.weight[1] = model.lm_head.weight[3]
    model.generation_config.pad_token_id = 2
    model.save_pretrained(out, safe_serialization=True)
