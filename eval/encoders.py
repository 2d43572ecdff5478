"""Dense text encoders for retrieval: any sentence-transformers model, or a Hugging Face encoder with pooling.

Both give float32 (n, dim) arrays, L2-normalised when ``normalize`` is on (inner product = cosine), and both report
``settings()``: everything besides the weights that changes the vectors, which goes into the embedding-cache key.

* :class:`SentenceTransformerEncoder` runs the model's own pipeline (its pooling, its Normalize module, its
  configured query/document prompts via ``encode_query``/``encode_document``), as the model's authors intended.
* :class:`HFEncoder` pools the last hidden states of ``AutoModel`` itself:
  ``mean``: ``e = sum_t m_t h_t / sum_t m_t`` over the attention mask ``m``; ``cls``: ``e = h_0``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from workbench.errors import WorkbenchError


class ModelLoadError(WorkbenchError):
    """A model folder exists but cannot be loaded as the asked kind; the message names the folder and the fix."""


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def detect_kind(path: str) -> str:
    """``sentence-transformers`` if the folder has modules.json, ``hf`` for an encoder; causal LMs need a choice."""
    p = Path(path)
    if (p / "modules.json").is_file():
        return "sentence-transformers"
    cfg = p / "config.json"
    if cfg.is_file():
        try:
            archs = json.loads(cfg.read_text()).get("architectures") or []
        except json.JSONDecodeError as e:
            raise ModelLoadError(f"{cfg}: not valid JSON ({e.msg} at line {e.lineno}); the model folder is damaged")
        if any(a.endswith("ForCausalLM") for a in archs):
            raise ModelLoadError(f"{path} is a causal LM ({archs[0]}); set model.kind: promptreps to embed with it, "
                                 "or pick an embedding model")
        return "hf"
    if not p.exists():  # a hub id transformers will download
        return "sentence-transformers"
    raise ModelLoadError(f"{path}: no modules.json or config.json; not a sentence-transformers or Hugging Face model")


class SentenceTransformerEncoder:
    def __init__(self, path: str, *, max_seq_length: int | None = None, batch_size: int = 32, normalize: bool = True,
                 query_prompt: str = "", doc_prompt: str = "", device: str = "auto", dtype: str = "float32",
                 trust_remote_code: bool = False, show_progress: bool = True):
        from sentence_transformers import SentenceTransformer

        self.path = path
        try:
            self.model = SentenceTransformer(path, device=pick_device(device), trust_remote_code=trust_remote_code,
                                             model_kwargs={"dtype": torch_dtype(dtype)})
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise ModelLoadError(f"model {path}: cannot load it as a sentence-transformers model "
                                 f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Check the folder "
                                 "(modules.json, config.json, weights) or set model.kind: hf") from None
        if max_seq_length is not None:
            self.model.max_seq_length = max_seq_length
        self.batch_size, self.normalize = batch_size, normalize
        self.query_prompt, self.doc_prompt = query_prompt, doc_prompt
        self.show_progress, self.dtype = show_progress, dtype

    def settings(self) -> dict:
        return {"kind": "sentence-transformers", "max_seq_length": self.model.max_seq_length,
                "normalize": self.normalize, "query_prompt": self.query_prompt, "doc_prompt": self.doc_prompt,
                "model_prompts": getattr(self.model, "prompts", None) or {}, "dtype": self.dtype}

    def _encode(self, fn, texts: list[str], prompt: str, progress: bool) -> np.ndarray:
        emb = fn(list(texts), prompt=prompt or None, batch_size=self.batch_size, convert_to_numpy=True,
                 normalize_embeddings=self.normalize, show_progress_bar=progress)
        return np.asarray(emb, dtype=np.float32)  # (n, dim)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        # encode_query applies the model's own configured "query" prompt when we set none.
        return self._encode(self.model.encode_query, texts, self.query_prompt, False)

    def encode_corpus(self, texts: list[str]) -> np.ndarray:
        return self._encode(self.model.encode_document, texts, self.doc_prompt, self.show_progress)


class HFEncoder:
    def __init__(self, path: str, *, pooling: str = "mean", max_seq_length: int | None = None, batch_size: int = 32,
                 normalize: bool = True, query_prompt: str = "", doc_prompt: str = "", device: str = "auto",
                 dtype: str = "float32", trust_remote_code: bool = False, show_progress: bool = True):
        from transformers import AutoModel, AutoTokenizer

        self.path, self.device = path, pick_device(device)
        try:
            self.tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            self.model = AutoModel.from_pretrained(path, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise ModelLoadError(f"model {path}: cannot load it as a Hugging Face encoder "
                                 f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Check the folder "
                                 "(config.json, tokenizer, weights)") from None
        self.model.to(self.device).eval()
        limit = getattr(self.model.config, "max_position_embeddings", 512)
        self.max_len = min(max_seq_length or 512, limit)
        self.pooling, self.batch_size, self.normalize = pooling, batch_size, normalize
        self.query_prompt, self.doc_prompt, self.dtype = query_prompt, doc_prompt, dtype
        self.show_progress = show_progress

    def settings(self) -> dict:
        return {"kind": "hf", "pooling": self.pooling, "max_seq_length": self.max_len, "normalize": self.normalize,
                "query_prompt": self.query_prompt, "doc_prompt": self.doc_prompt, "dtype": self.dtype}

    def _encode(self, texts: list[str], progress: bool) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm

        # Longest first, so each batch pads to similar lengths; results go back to input order.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        bar = tqdm(total=len(texts), desc="encode", unit="text", disable=not progress, file=sys.stderr)
        with torch.inference_mode():
            for b in range(0, len(order), self.batch_size):
                idx = order[b:b + self.batch_size]
                batch = self.tok([texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_len,
                                 return_tensors="pt").to(self.device)
                h = self.model(**batch).last_hidden_state.float()  # (B, T, H)
                if self.pooling == "cls":
                    e = h[:, 0]  # (B, H)
                else:
                    m = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
                    e = (h * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, H)
                if self.normalize:
                    e = torch.nn.functional.normalize(e, p=2, dim=-1)
                out[idx] = e.cpu().numpy()
                bar.update(len(idx))
        bar.close()
        return out

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode([self.query_prompt + t for t in texts], False)

    def encode_corpus(self, texts: list[str]) -> np.ndarray:
        return self._encode([self.doc_prompt + t for t in texts], self.show_progress)
