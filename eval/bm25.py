"""BM25 baseline through bm25s (Lù 2024): lower-cased word tokens (``\\b\\w\\w+\\b``), English stopwords removed,
optionally stemmed (``stemmer: english`` = Snowball/Porter2 through PyStemmer, an optional package).

Defaults ``k1=0.9, b=0.4`` are Anserini's BEIR "flat" settings. Only documents that share a term with the query
are returned (score > 0), as an inverted index would: a query with no matching term returns nothing, and the eval
counts it instead of ranking arbitrary zero-score documents.
"""

from __future__ import annotations

from workbench.errors import WorkbenchError


class BM25Search:
    def __init__(self, k1: float = 0.9, b: float = 0.4, method: str = "lucene", stopwords: str | None = "en",
                 stemmer: str | None = None):
        self.k1, self.b, self.method, self.stopwords, self.stemmer_name = k1, b, method, stopwords, stemmer
        self.stemmer = None
        if stemmer:
            try:
                import Stemmer
            except ImportError:
                raise WorkbenchError(f"bm25.stemmer: {stemmer} needs the PyStemmer package: pip install PyStemmer, "
                                     "or set bm25.stemmer: null") from None
            try:
                self.stemmer = Stemmer.Stemmer(stemmer).stemWords
            except KeyError:
                raise WorkbenchError(f"bm25.stemmer: unknown language {stemmer!r}; one of "
                                     f"{sorted(Stemmer.algorithms())}") from None

    def settings(self) -> dict:
        return {"kind": "bm25", "k1": self.k1, "b": self.b, "method": self.method, "stopwords": self.stopwords,
                "stemmer": self.stemmer_name}

    def label(self) -> str:
        stem = f",{self.stemmer_name}-stem" if self.stemmer_name else ""
        return f"bm25s(k1={self.k1},b={self.b},{self.method}{stem})"

    def _tokenize(self, texts: list[str], return_ids: bool):
        import bm25s

        return bm25s.tokenize(texts, stopwords=self.stopwords, stemmer=self.stemmer, return_ids=return_ids,
                              show_progress=False)

    def search(self, doc_ids: list[str], doc_texts: list[str], query_ids: list[str], query_texts: list[str],
               k: int) -> dict[str, dict[str, float]]:
        import bm25s

        retriever = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
        retriever.index(self._tokenize(doc_texts, True), show_progress=False)
        # Query tokens as strings, kept only if the corpus has them (bm25s maps strings onto the corpus vocabulary).
        vocab = retriever.vocab_dict
        q_tokens = [[t for t in toks if t in vocab]
                    for toks in self._tokenize(query_texts, False)]
        run: dict[str, dict[str, float]] = {q: {} for q in query_ids}
        todo = [i for i, toks in enumerate(q_tokens) if toks]
        if not todo:
            return run
        idx, scores = retriever.retrieve([q_tokens[i] for i in todo], k=min(k, len(doc_ids)), show_progress=False)
        for row, i in enumerate(todo):  # idx, scores: (len(todo), k)
            run[query_ids[i]] = {doc_ids[j]: float(s) for j, s in zip(idx[row].tolist(), scores[row].tolist()) if s > 0}
        return run
