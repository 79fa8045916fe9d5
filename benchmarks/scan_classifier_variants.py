"""Scoring paths of the scan classifier's attempts that did not ship, kept out of the plugin.

The gateway serves v4 (``ml.injection-clf@4``: hashed n-grams and a linear model, plugins/scan/classifier.py),
and no shipped weights file can build anything else. The pre-registered attempts that lost to it on the
development split (docs/scan-classifier.md) live here, so that ``benchmarks/scan_classifier_dev.py`` and the
variant training in ``benchmarks/train_scan_classifier.py`` still reproduce the documented tables:

- v8 (``--mlp``, docs/scan-classifier-v8-plan.md): a small MLP on v4's hashed features (:class:`MlpClassifier`).

Each is a subclass of :class:`InjectionClassifier` that overrides the margin (the best window's raw score) and
keeps everything else (calibration, family head, span, decoded views, severity) v4's; its weights are v4's
``_Weights`` plus the variant's part. :func:`classifier` builds the right one for a weights object.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from dataclasses import dataclass

import numpy as np

from gateway_plugins.scan import classifier as clf
from gateway_plugins.scan.classifier import _Margin, blocks, normalize, pair_id, token_ids, tokens

__all__ = ["Mlp", "MlpClassifier", "MlpWeights", "classifier"]

_MLP_CACHE_TOKENS = 1 << 15  # v8: tokens whose summed embedding row is kept (32,768 x (H + 1) float32)


@dataclass(frozen=True, slots=True)
class _VariantWeights(clf._Weights):
    @classmethod
    def over(cls, base: clf._Weights, **part) -> _VariantWeights:
        """v4's weights ``base`` with a variant's part added."""
        return cls(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)}, **part)


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


def classifier(weights: clf._Weights, **options) -> clf.InjectionClassifier:
    """The stage for ``weights``: v4's :class:`InjectionClassifier`, or the subclass of the variant they are."""
    if isinstance(weights, MlpWeights):
        return MlpClassifier(weights, **options)
    return clf.InjectionClassifier(weights, **options)
