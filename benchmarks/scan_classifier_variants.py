"""Scoring paths of the scan classifier's attempts that did not ship, kept out of the plugin.

The gateway serves v4 (``ml.injection-clf@4``: hashed n-grams and a linear model, plugins/scan/classifier.py),
and no shipped weights file can build anything else. The pre-registered attempts that lost to it on the
development split (docs/scan-classifier.md) live here, so that ``benchmarks/scan_classifier_dev.py`` and the
variant training in ``benchmarks/train_scan_classifier.py`` still reproduce the documented tables:

- v7 (``--embedding``, docs/scan-classifier-v7-plan.md): v4's margin plus a static-embedding term, the mean
  score of each window's LLaMA pieces (:class:`EmbeddingClassifier`; the pieces come from wordllama's files,
  benchmarks/scan_classifier_embedding.py);
- v8 (``--mlp``, docs/scan-classifier-v8-plan.md): a small MLP on v4's hashed features (:class:`MlpClassifier`);
- v14 (``--static``, docs/scan-classifier-v14-plan.md): a model2vec static model distilled from MiniLM, each
  window's normalised summed WordPiece vector through a head, alone or mixed with v4's margin per window
  (:class:`StaticClassifier`; the table and pieces come from benchmarks/scan_classifier_static.py).

Each is a subclass of :class:`InjectionClassifier` that overrides the margin (the best window's raw score) and
keeps everything else (calibration, family head, span, decoded views, severity) v4's; its weights are v4's
``_Weights`` plus the variant's part. :func:`classifier` builds the right one for a weights object.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import threading
from array import array
from dataclasses import dataclass

import numpy as np

from gateway_plugins.scan import classifier as clf
from gateway_plugins.scan.classifier import _Margin, blocks, normalize, pair_id, token_ids, tokens

__all__ = ["EmbeddingClassifier", "EmbeddingWeights", "Mlp", "MlpClassifier", "MlpWeights", "StaticClassifier",
           "StaticHead", "StaticWeights", "classifier", "static_head", "window_tokens"]

_MLP_CACHE_TOKENS = 1 << 15  # v8: tokens whose summed embedding row is kept (32,768 x (H + 1) float32)
_STATIC_CACHE_TOKENS = 1 << 15  # v14: tokens whose summed WordPiece vector is kept (32,768 x 256 float32)


@dataclass(frozen=True, slots=True)
class _VariantWeights(clf._Weights):
    @classmethod
    def over(cls, base: clf._Weights, **part) -> _VariantWeights:
        """v4's weights ``base`` with a variant's part added."""
        return cls(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)}, **part)


def window_tokens(text: str, window: int, stride: int, *, whole: bool = False) -> list[list[str]]:
    """The distinct tokens of each window the stage's ``window_ids`` gives (a token in both blocks of a window
    twice), which the embedding part of a v7 model averages its pieces over."""
    per_block = [list(toks) for toks, _pairs in blocks(tokens(normalize(text)), window, stride)]
    if whole or len(per_block) == 1:
        return [[t for toks in per_block for t in toks]]
    return [a + b for a, b in zip(per_block, per_block[1:], strict=False)]


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbeddingWeights(_VariantWeights):
    """v7: a window's margin is k4 * (its hashed n-gram margin) + ke * (its LLaMA pieces' mean score) + ce;
    ``emb`` holds one score per piece, ``mix`` is (k4, ke, ce), ``pieces`` maps a token to its pieces
    (``scan_classifier_embedding.Pieces``)."""

    emb: np.ndarray
    mix: tuple[float, float, float]
    pieces: object


class EmbeddingClassifier(clf.InjectionClassifier):
    """v7: the stage with a static-embedding term per window (each token's summed piece score and piece count
    cached like the n-gram sums)."""

    def __init__(self, weights: EmbeddingWeights, **options) -> None:
        super().__init__(weights, **options)
        self._es = array("d", np.asarray(weights.emb, dtype=np.float64).tobytes())
        self._k4, self._ke, self._ce = (float(x) for x in weights.mix)
        self._te: dict[str, tuple[float, int]] = {}

    def _learn_emb(self, token: str) -> tuple[float, int]:
        ids = self._w.pieces.ids(token)
        value = (sum(map(self._es.__getitem__, ids)), len(ids))
        if len(self._te) >= clf._CACHE_ENTRIES:
            self._te.clear()
        self._te[token] = value
        return value

    def _eblock(self, toks: dict[str, None]) -> tuple[float, int]:
        """Summed piece score and piece count of a block's distinct tokens."""
        values = list(map(self._te.get, toks))
        if None in values:
            values = [self._learn_emb(t) if v is None else v for t, v in zip(toks, values, strict=True)]
        return sum(v[0] for v in values), sum(v[1] for v in values)

    def _margin(self, text: str) -> _Margin:
        """The best window's margin: v4's n-gram margin and the embedding term, mixed per window."""
        w = self._w
        k4, ke, ce, b0 = self._k4, self._ke, self._ce, self._b0
        norm = normalize(text)
        toks = tokens(norm)
        if not toks:
            return _Margin(k4 * b0 + ce, 0, norm, toks, [])
        parts = blocks(toks, w.window, w.stride)
        if len(parts) == 1:
            t, p = parts[0]
            z0 = self._block(t, p) / math.sqrt(len(t) + len(p)) + b0
            es, en = self._eblock(t)
            return _Margin(k4 * z0 + ke * es / en + ce, 0, norm, toks, parts)
        sums = [self._block(t, p) for t, p in parts]
        sizes = [len(t) + len(p) for t, p in parts]
        eb = [self._eblock(t) for t, _p in parts]
        # (v4's window margin, then the mix, less b0 and plus it again: the arithmetic the documented table used)
        z = [k4 * ((sums[i] + sums[i + 1]) / math.sqrt(sizes[i] + sizes[i + 1]) + b0)
             + ke * (eb[i][0] + eb[i + 1][0]) / (eb[i][1] + eb[i + 1][1]) + ce - b0 for i in range(len(parts) - 1)]
        best = max(range(len(z)), key=z.__getitem__)
        return _Margin(z[best] + b0, best, norm, toks, parts)


@dataclass(frozen=True, slots=True)
class Mlp:
    """A window's margin is ``w2 . relu(x E[:, :hidden] + b1) + b2`` (plus ``x E[:, hidden]`` with ``skip``),
    where ``x`` is the window's hashed vector over ``2**bits`` buckets: E's rows are a per-bucket embedding, so a
    token's summed row caches like v4's per-token sums."""

    bits: int
    E: np.ndarray  # (2**bits, hidden + skip) float32 (float16 values)
    b1: np.ndarray  # (hidden,) float32
    w2: np.ndarray  # (hidden,) float32
    b2: float
    hidden: int
    skip: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class MlpWeights(_VariantWeights):
    """v8: the attack-versus-benign margin is the MLP's and W0 is not read (the family head stays WF)."""

    mlp: Mlp


class MlpClassifier(clf.InjectionClassifier):
    """v8: the stage with an MLP's margin (per-bucket embedding rows cached per token, a few numpy calls per text)."""

    def __init__(self, weights: MlpWeights, **options) -> None:
        super().__init__(weights, **options)
        m = weights.mlp
        # E with one zero row after the last bucket: a block with no bigram sums that row
        self._mE = np.vstack([m.E, np.zeros((1, m.E.shape[1]), dtype=np.float32)])
        self._mzero = m.E.shape[0]
        self._mmask = (1 << m.bits) - 1
        self._mrows = np.zeros((_MLP_CACHE_TOKENS, m.E.shape[1]), dtype=np.float32)
        self._mtok: dict[str, int] = {}  # token -> its summed row in _mrows
        self._mpair: dict[tuple[str, str], int] = {}  # bigram -> its bucket
        self._mlock = threading.Lock()  # a row index is valid only until the cache is emptied

    def _mlp_token_rows(self, distinct: list[str]) -> tuple[dict[str, int], np.ndarray]:
        """Row of each token's summed embedding (learning the new ones in one numpy call); under _mlock."""
        seen = self._mtok
        new = [t for t in distinct if t not in seen]
        if not new:
            return seen, self._mrows
        mask = self._mmask
        if len(distinct) > _MLP_CACHE_TOKENS:  # a huge text: a table for this text alone, nothing cached
            ids = [token_ids(t, mask) for t in distinct]
            starts = list(itertools.accumulate((len(i) for i in ids[:-1]), initial=0))
            flat = [i for row in ids for i in row]
            return {t: k for k, t in enumerate(distinct)}, np.add.reduceat(self._mE[flat], starts, axis=0)
        if len(seen) + len(new) > _MLP_CACHE_TOKENS:
            seen.clear()
            new = distinct
        ids = [token_ids(t, mask) for t in new]
        starts = list(itertools.accumulate((len(i) for i in ids[:-1]), initial=0))
        flat = [i for row in ids for i in row]
        first = len(seen)
        self._mrows[first : first + len(new)] = np.add.reduceat(self._mE[flat], starts, axis=0)
        seen.update(zip(new, range(first, first + len(new)), strict=True))
        return seen, self._mrows

    def _mlp_pair(self, pair: tuple[str, str]) -> int:
        value = pair_id(pair, self._mmask)
        if len(self._mpair) >= clf._CACHE_ENTRIES:
            self._mpair.clear()
        self._mpair[pair] = value
        return value

    def _margin(self, text: str) -> _Margin:
        """The best window's MLP margin. Per block, the summed rows of its distinct tokens (cached per token)
        and bigrams (one row each); per window, the sum of its two blocks' over sqrt(their size), then ReLU and
        the output layer: a few numpy calls per text."""
        m = self._w.mlp
        norm = normalize(text)
        toks = tokens(norm)
        if not toks:
            h = np.maximum(m.b1, 0.0)
            return _Margin(float(h @ m.w2) + m.b2, 0, norm, toks, [])
        w = self._w
        parts = blocks(toks, w.window, w.stride)
        pget, zero = self._mpair.get, self._mzero
        pids, pstarts = [], []
        for _t, p in parts:
            pstarts.append(len(pids))
            values = list(map(pget, p))
            if None in values:
                values = [self._mlp_pair(q) if v is None else v for q, v in zip(p, values, strict=True)]
            pids += values
            pids.append(zero)
        tstarts = list(itertools.accumulate((len(t) for t, _p in parts[:-1]), initial=0))
        with self._mlock:
            table, rows = self._mlp_token_rows(list(dict.fromkeys(t for b, _p in parts for t in b)))
            tidx = [table[t] for b, _p in parts for t in b]
            S = np.add.reduceat(rows[tidx], tstarts, axis=0)
        S += np.add.reduceat(self._mE[pids], pstarts, axis=0)
        sizes = np.array([len(t) + len(p) for t, p in parts], dtype=np.float32)
        if len(parts) > 1:
            S = S[:-1] + S[1:]
            sizes = sizes[:-1] + sizes[1:]
        A = S / np.sqrt(sizes)[:, None]
        H = A[:, : m.hidden] + m.b1
        np.maximum(H, 0.0, out=H)
        z = H @ m.w2 + m.b2
        if m.skip:
            z += A[:, m.hidden]
        best = int(np.argmax(z))
        return _Margin(float(z[best]), best, norm, toks, parts)


@dataclass(frozen=True, slots=True)
class StaticHead:
    """v14: a window's static margin is ``head(u)``, where ``u`` is the L2-normalised sum of the WordPiece vectors
    (rows of ``E``) of its tokens' pieces (the mean's direction, as model2vec normalises it; zero for no piece):
    ``u . w + b`` without a hidden layer (``W1`` None), else ``relu(u W1 + b1) . w + b``. The window's margin
    is ``k4 * (v4's margin) + ks * head(u) + c`` with ``mix = (k4, ks, c)``."""

    E: np.ndarray  # (vocabulary, dims) float32 (float16 values)
    W1: np.ndarray | None  # (dims, H) float32, or None
    b1: np.ndarray | None  # (H,) float32, or None
    w: np.ndarray  # (H,) or (dims,) float32
    b: float
    mix: tuple[float, float, float]


def static_head(u: np.ndarray, head: StaticHead) -> np.ndarray:
    """The head's margin for each row of ``u`` (windows x dims, already normalised); training uses it too."""
    if head.W1 is None:
        return u @ head.w + head.b
    h = u @ head.W1 + head.b1
    np.maximum(h, 0.0, out=h)
    return h @ head.w + head.b


@dataclass(frozen=True, slots=True, kw_only=True)
class StaticWeights(_VariantWeights):
    """v14: v4's weights plus a static head and the pieces (``scan_classifier_static.StaticTable``)."""

    static: StaticHead
    pieces: object


class StaticClassifier(clf.InjectionClassifier):
    """v14: the stage with a static-embedding margin per window (each token's summed WordPiece vector cached,
    a few numpy calls per text), alone or mixed with v4's."""

    def __init__(self, weights: StaticWeights, **options) -> None:
        super().__init__(weights, **options)
        h = weights.static
        # E with one zero row after the last piece: every token lists it, so a token with no piece sums to zero
        self._sE = np.vstack([h.E, np.zeros((1, h.E.shape[1]), dtype=np.float32)])
        self._szero = h.E.shape[0]
        self._k4, self._ks, self._sc = (float(x) for x in h.mix)
        self._srows = np.zeros((_STATIC_CACHE_TOKENS, h.E.shape[1]), dtype=np.float32)
        self._stok: dict[str, int] = {}  # token -> its summed vector's row in _srows
        self._slock = threading.Lock()  # a row index is valid only until the cache is emptied

    def _piece_sums(self, tokens_: list[str]) -> np.ndarray:
        ids = [self._w.pieces.ids(t) + [self._szero] for t in tokens_]
        starts = list(itertools.accumulate((len(i) for i in ids[:-1]), initial=0))
        return np.add.reduceat(self._sE[[i for row in ids for i in row]], starts, axis=0)

    def _static_rows(self, distinct: list[str]) -> tuple[dict[str, int], np.ndarray]:
        """Row of each token's summed piece vector (learning the new ones in one numpy call); under _slock."""
        seen = self._stok
        new = [t for t in distinct if t not in seen]
        if not new:
            return seen, self._srows
        if len(distinct) > _STATIC_CACHE_TOKENS:  # a huge text: a table for this text alone, nothing cached
            return {t: k for k, t in enumerate(distinct)}, self._piece_sums(distinct)
        if len(seen) + len(new) > _STATIC_CACHE_TOKENS:
            seen.clear()
            new = distinct
        first = len(seen)
        self._srows[first : first + len(new)] = self._piece_sums(new)
        seen.update(zip(new, range(first, first + len(new)), strict=True))
        return seen, self._srows

    def static_margins(self, parts) -> np.ndarray:
        """The static head's margin of each window of ``parts`` (the stage's blocks; one window if one block)."""
        tstarts = list(itertools.accumulate((len(t) for t, _p in parts[:-1]), initial=0))
        with self._slock:
            table, rows = self._static_rows(list(dict.fromkeys(t for b, _p in parts for t in b)))
            tidx = [table[t] for b, _p in parts for t in b]
            S = np.add.reduceat(rows[tidx], tstarts, axis=0)
        if len(parts) > 1:
            S = S[:-1] + S[1:]
        norms = np.sqrt(np.einsum("ij,ij->i", S, S))
        U = S / np.maximum(norms, 1e-12)[:, None]
        return static_head(U, self._w.static)

    def _margin(self, text: str) -> _Margin:
        """The best window's margin: ``k4 * v4's + ks * the static head's + c`` per window."""
        w = self._w
        k4, ks, c, b0 = self._k4, self._ks, self._sc, self._b0
        norm = normalize(text)
        toks = tokens(norm)
        if not toks:
            zero = np.zeros((1, w.static.E.shape[1]), dtype=np.float32)
            return _Margin(k4 * b0 + ks * float(static_head(zero, w.static)[0]) + c, 0, norm, toks, [])
        parts = blocks(toks, w.window, w.stride)
        zs = self.static_margins(parts)
        if k4 == 0.0:
            z = zs * ks + c
        elif len(parts) == 1:
            t, p = parts[0]
            z = [k4 * (self._block(t, p) / math.sqrt(len(t) + len(p)) + b0) + ks * float(zs[0]) + c]
        else:
            sums = [self._block(t, p) for t, p in parts]
            sizes = [len(t) + len(p) for t, p in parts]
            z = [k4 * ((sums[i] + sums[i + 1]) / math.sqrt(sizes[i] + sizes[i + 1]) + b0) + ks * float(zs[i]) + c
                 for i in range(len(parts) - 1)]
        z = [float(x) for x in z]
        best = max(range(len(z)), key=z.__getitem__)
        return _Margin(z[best], best, norm, toks, parts)


def classifier(weights: clf._Weights, **options) -> clf.InjectionClassifier:
    """The stage for ``weights``: v4's :class:`InjectionClassifier`, or the subclass of the variant they are."""
    if isinstance(weights, EmbeddingWeights):
        return EmbeddingClassifier(weights, **options)
    if isinstance(weights, MlpWeights):
        return MlpClassifier(weights, **options)
    if isinstance(weights, StaticWeights):
        return StaticClassifier(weights, **options)
    return clf.InjectionClassifier(weights, **options)
