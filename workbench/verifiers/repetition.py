"""Word n-gram repetition: how much of a completion repeats itself (degenerate loops in long reasoning).

Definitions (used by the ``rollout_aware`` verifier and reported in its details):

* **word tokens** -- the completion split on whitespace, case-folded (``str.split()`` then ``str.casefold``);
  punctuation stays attached to its word, so ``"apple."`` and ``"apple"`` are different tokens. No model
  tokenizer is involved, so the ratio is the same whichever policy wrote the text.
* **n-grams** -- the ``T - n + 1`` contiguous windows of ``n`` word tokens (``T`` tokens in all), counted with
  multiplicity.
* **repetition ratio** -- ``1 - |unique n-grams| / |n-grams|``, i.e. the fraction of n-gram positions whose
  n-gram already occurred earlier in the text. 0.0 means no n-gram occurs twice; a text that loops one
  phrase forever tends to 1. A text with fewer than ``n`` tokens has no n-grams and ratio 0.0.

Example: ``"a b c a b c"`` with ``n = 2`` has the 5 bigrams ``ab bc ca ab bc``, 3 of them unique, so the
ratio is ``1 - 3/5 = 0.4``.
"""

from __future__ import annotations

__all__ = ["word_tokens", "ngram_repetition_ratio"]


def word_tokens(text: str) -> list[str]:
    """Whitespace-separated, case-folded tokens (the module docstring's "word tokens")."""
    return [t.casefold() for t in (text or "").split()]


def ngram_repetition_ratio(text: str | list[str], n: int = 4) -> float:
    """``1 - unique_ngrams / total_ngrams`` over word tokens; 0.0 when there are fewer than ``n`` tokens.

    ``text`` may already be a token list (as returned by :func:`word_tokens`), so callers that also need the
    length tokenise once.
    """
    if n < 1:
        raise ValueError(f"n-gram size must be >= 1, got {n}")
    tokens = word_tokens(text) if isinstance(text, str) else list(text)
    total = len(tokens) - n + 1
    if total <= 0:
        return 0.0
    unique = len({tuple(tokens[i:i + n]) for i in range(total)})
    return 1.0 - unique / total
