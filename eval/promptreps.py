"""PromptReps: zero-shot dense + sparse representations from a causal LM's one-word answer.

Zhuang, Ma, Koopman, Lin, Zuccon 2024, "PromptReps: Prompting Large Language Models to Generate Dense and Sparse
Representations for Zero-Shot Document Retrieval" (EMNLP 2024, arXiv:2404.18424), as the authors' code runs it
(github.com/ielab/PromptReps: ``prompts/<model>/{passage,query}_{prefix,suffix}.txt``, ``dataset.py``,
``encode.py``, ``search.py``, ``hybrid.py``, and the BEIR commands of its README). The LM is asked to represent the
text by one word, and the representations are read off the last prompt position ``t`` (the one that predicts it):

* prompt: the wording of the authors' prompt files (the same in every model's files; the paper's Fig. 1 words it
  slightly differently), rendered through the tokenizer's chat template, which yields those files' text for the
  models they cover (e.g. Llama-3-Instruct, Phi-3)::

      system:    You are an AI assistant that can understand human language.
      user:      Passage: "<text>". Use one word to represent the passage in a retrieval task. Make sure your
                 word is in lowercase.
      assistant: The word is: "

  (queries: ``Query`` / ``the query``). As in the authors' collator, the text (``title text``, stripped) is
  tokenised on its own, cut to ``passage_max_tokens`` / ``query_max_tokens`` (512 both, the authors'
  ``--passage_max_len`` / ``--query_max_len``) and put between the prompt's tokens, so the instruction survives;
* dense: ``e = h_t / ||h_t||`` with ``h_t`` the final-layer hidden state at ``t`` (the LM head's input);
* sparse: ``w = log(1 + relu(z_t))`` with ``z_t`` the next-token logits at ``t``, kept only on the tokens of
  the text: as in the authors' code, the text is lower-cased, split into words, stopwords dropped, and each word
  tokenised on its own; the ``sparse_max_terms`` (128) largest weights among those tokens are kept. A text with no
  such token keeps the 10 largest weights over the whole vocabulary (the authors' fallback);
* scores: dense ``<e_q, e_d>`` (cosine), sparse ``<w_q, w_d>``; hybrid fuses the top-1000 dense and top-1000 sparse
  lists (the authors' ``--depth 1000``; ``promptreps.fusion_depth``) with per-query min-max normalisation and weights
  ``alpha`` / ``1 - alpha`` (:func:`workbench_eval.search.minmax_fuse`, the authors' ``hybrid.fuse``), then cuts to
  ``search.top_k``.

Differences from the authors' runs that remain (options where one is cheap):

* words come from the regex ``\\w+`` and scikit-learn's English stopword list; the authors use NLTK's
  ``word_tokenize`` and NLTK's list plus punctuation, which need a data download (e.g. "don't": ours ``don``, ``t``;
  NLTK ``do``, ``n't``);
* sparse weights stay float by default; ``promptreps.sparse_quantize: true`` rounds them to the integers
  ``rint(100 w)`` of the authors' Lucene impact index (which only rounds scores);
* the authors write one prompt file per model; we render the model's own chat template, which gives the same text
  for templates with a system role (Llama-3, Phi-3). A template without one (the authors' Mistral-7B-Instruct-v0.2
  file puts the system sentence inside ``[INST]``) does whatever it does with a system message (an error, or
  another placement); ``promptreps.chat: false`` uses a plain-text prompt instead;
* the authors search with ``--remove_query`` (a document whose id equals the query id is dropped from the ranking,
  BEIR's ``ignore_identical_ids``); we never drop documents from a run;
* the authors' GPU FAISS index stores float16 vectors; our exact search scores in float32.
"""

from __future__ import annotations

import re
import sys

import numpy as np

from workbench_eval.encoders import ModelLoadError, pick_device, torch_dtype

SYSTEM_PROMPT = "You are an AI assistant that can understand human language."
# ielab/PromptReps prompts/*/{passage,query}_suffix.txt (every model's files word it so)
USER_PROMPT = ('{Kind}: "{text}". Use one word to represent the {kind} in a retrieval task. '
               "Make sure your word is in lowercase.")
ANSWER_PREFIX = 'The word is: "'
FALLBACK_TERMS = 10
_SENTINEL = "\uf8ffTEXT\uf8ff"  # a private-use marker to split the rendered template around the text
_WORD = re.compile(r"\w+")


def _stopwords() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


class PromptRepsEncoder:
    def __init__(self, path: str, *, passage_max_tokens: int = 512, query_max_tokens: int = 512,
                 sparse_max_terms: int = 128, sparse_quantize: bool = False, batch_size: int = 16, chat: bool = True,
                 device: str = "auto", dtype: str = "float32", trust_remote_code: bool = False,
                 show_progress: bool = True):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path, self.device = path, pick_device(device)
        try:
            self.tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype),
                                                              trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise ModelLoadError(f"model {path}: cannot load it as a causal LM for PromptReps "
                                 f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        if chat and not self.tok.chat_template:
            raise ModelLoadError(f"model {path}: its tokenizer has no chat template; set promptreps.chat: false to "
                                 "use the plain-text prompt")
        self.model.to(self.device).eval()
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self.max_tokens = {"passage": passage_max_tokens, "query": query_max_tokens}
        self.sparse_max_terms, self.batch_size, self.chat = sparse_max_terms, batch_size, chat
        self.sparse_quantize = sparse_quantize
        self.dtype, self.show_progress = dtype, show_progress
        self.vocab_size = self.model.get_output_embeddings().weight.shape[0]
        self.parts = {k: self._prompt_parts(k) for k in ("passage", "query")}
        self._stop = _stopwords()
        self._word_ids: dict[str, list[int]] = {}

    # prompt --------------------------------------------------------------------------------------------------------
    def _prompt_parts(self, kind: str) -> tuple[list[int], list[int]]:
        """Token ids before and after the text: the rendered prompt split at the text's place."""
        user = USER_PROMPT.format(Kind=kind.capitalize(), kind=kind, text=_SENTINEL)
        if self.chat:
            msgs = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
            rendered = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) + ANSWER_PREFIX
        else:
            rendered = f"{SYSTEM_PROMPT}\n\n{user}\n\n{ANSWER_PREFIX}"
        before, after = rendered.split(_SENTINEL)
        return (self.tok.encode(before, add_special_tokens=False), self.tok.encode(after, add_special_tokens=False))

    def prompt_ids(self, text: str, kind: str) -> list[int]:
        """prefix + the text's own tokens (truncated to the kind's budget) + suffix, as in the authors' collator
        (which strips the text: ``f"{title} {text}".strip()`` / ``query.strip()``)."""
        pre, post = self.parts[kind]
        ids = self.tok.encode(text.strip(), add_special_tokens=False)[:self.max_tokens[kind]]
        return pre + ids + post

    def settings(self) -> dict:
        return {"kind": "promptreps", "system": SYSTEM_PROMPT, "user": USER_PROMPT, "answer": ANSWER_PREFIX,
                "chat": self.chat, "max_tokens": self.max_tokens, "sparse_max_terms": self.sparse_max_terms,
                "sparse_quantize": self.sparse_quantize,
                "stopwords": "sklearn-english", "dtype": self.dtype, "prefix": self.parts["passage"][0],
                "suffix": self.parts["passage"][1]}

    # sparse vocabulary -------------------------------------------------------------------------------------------
    def text_token_ids(self, text: str) -> list[int]:
        """Token ids of the text's non-stopword words (lower-cased, each word tokenised on its own), sorted."""
        words = {w for w in _WORD.findall(text.lower()) if w not in self._stop}
        new = sorted(w for w in words if w not in self._word_ids)
        if new:
            for w, ids in zip(new, self.tok(new, add_special_tokens=False)["input_ids"]):
                self._word_ids[w] = ids
        return sorted({i for w in words for i in self._word_ids[w] if 0 <= i < self.vocab_size})

    def _sparse_row(self, weights: np.ndarray, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, weights) of one text's sparse vector from its full-vocabulary weights (V,)."""
        ids = np.asarray(self.text_token_ids(text), dtype=np.int64)
        if ids.size == 0:
            ids = np.arange(weights.shape[0])
            keep = FALLBACK_TERMS
        else:
            keep = self.sparse_max_terms
        vals = weights[ids]
        if ids.size > keep:
            top = np.argpartition(-vals, keep - 1)[:keep]
            ids, vals = ids[top], vals[top]
        if self.sparse_quantize:  # the authors' integer impacts: np.rint(w * 100)
            vals = np.rint(vals * 100.0)
        nz = vals > 0  # relu zeros (and, quantised, weights below 0.005) carry no weight
        order = np.argsort(ids[nz])
        return ids[nz][order], vals[nz][order]

    # encoding ----------------------------------------------------------------------------------------------------
    def encode(self, texts: list[str], kind: str):
        """Dense (n, hidden) float32, L2-normalised, and sparse CSR (n, vocab) representations of ``texts``."""
        import scipy.sparse
        import torch
        from tqdm.auto import tqdm

        seqs = [self.prompt_ids(t, kind) for t in texts]
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        dense = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        rows: list[tuple[np.ndarray, np.ndarray]] = [None] * len(texts)  # type: ignore[list-item]
        captured = {}
        head = self.model.get_output_embeddings()
        hook = head.register_forward_hook(lambda mod, inp, out: captured.__setitem__("h", inp[0]))
        bar = tqdm(total=len(texts), desc=f"promptreps {kind}", unit="text", file=sys.stderr,
                   disable=not (self.show_progress and kind == "passage"))
        try:
            with torch.inference_mode():
                for b in range(0, len(order), self.batch_size):
                    idx = order[b:b + self.batch_size]
                    width = max(len(seqs[i]) for i in idx)
                    # Left padding puts every prompt's last token at position -1; explicit position ids keep each
                    # sequence's positions 0..len-1, so padding changes nothing.
                    ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)  # (B, T)
                    mask = torch.zeros((len(idx), width), dtype=torch.long)  # (B, T)
                    for r, i in enumerate(idx):
                        ids[r, width - len(seqs[i]):] = torch.tensor(seqs[i])
                        mask[r, width - len(seqs[i]):] = 1
                    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
                    out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                     position_ids=pos.to(self.device), logits_to_keep=1)
                    h = captured["h"][:, -1].float()  # (B, H): the LM head's input at the last prompt position
                    z = out.logits[:, -1].float()  # (B, V): next-token logits there
                    e = torch.nn.functional.normalize(h, p=2, dim=-1)  # dense representation
                    w = torch.log1p(torch.relu(z)).cpu().numpy()  # sparse weights, before the text-token restriction
                    dense[idx] = e.cpu().numpy()
                    for r, i in enumerate(idx):
                        rows[i] = self._sparse_row(w[r], texts[i])
                    bar.update(len(idx))
        finally:
            hook.remove()
            bar.close()
        indptr = np.cumsum([0] + [len(r[0]) for r in rows])
        indices = np.concatenate([r[0] for r in rows]) if rows else np.zeros(0, dtype=np.int64)
        data = np.concatenate([r[1] for r in rows]).astype(np.float32) if rows else np.zeros(0, dtype=np.float32)
        sparse = scipy.sparse.csr_matrix((data, indices, indptr), shape=(len(texts), self.vocab_size))
        return dense, sparse
