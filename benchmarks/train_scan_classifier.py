"""Train the scan plugin's learned stage (plugins/scan/model/injection-clf.*) reproducibly, offline, on one core.

    pip install -e '.[train]'
    python benchmarks/train_scan_classifier.py            # writes plugins/scan/model/, prints held-out figures
    python benchmarks/train_scan_classifier.py --check    # trains in memory and compares with the shipped file

Data: benchmarks/scan_corpus.py (template-generated corpus plus public packages from PyPI; nothing is
downloaded at run time and no evaluation-only corpus is read). The held-out split is chosen by source.
The same feature function as the gateway's (``window_ids`` in plugins/scan/classifier.py) builds the
training matrix, so training and serving cannot drift apart.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import scan_classifier_variants as variants  # noqa: E402
import scan_corpus  # noqa: E402

from gateway_plugins.scan import classifier as clf  # noqa: E402

NAME = "injection-clf"
VERSION = "4"
SEED = 1234
BITS = 18
# v3: among 2048, 8192, 32768 on the development split (benchmarks/scan_classifier_dev.py; v2: 8 ... 8192)
C_BINARY = 32768.0
C_FAMILY = 4.0
WINDOW = 32  # tokens (words and punctuation runs); v2 used 128 characters, see docs/scan-classifier.md
STRIDE = 16
# The calibrated even odds (0.5), unless the scan dev set (never trained on) needs a higher one to keep its model
# false positives at one or fewer. v2 did not (its highest benign score was 0.19); v3 did (0.544 and 0.512: 0.52);
# v4 does not (its highest benign dev-set scores are 0.475 and 0.239).
THRESHOLD = 0.5
# v11 attempt (--v11, not shipped): version 5; its highest benign dev-set scores were 0.567 and 0.524, so the rule
# above gives 0.53 (one model false positive left on the scan dev set, which failed v11's acceptance rule)
V11_VERSION, V11_THRESHOLD = "5", 0.53
BANDS = (0.5, 0.85)
# Share of the benign weight per source group: hard negatives (synthetic), chat (chatterbot, chitchat),
# technical prose (stdlib docstrings), documents and inputs of the attack tool kits (spikee, aib, agentprobe).
# Share of the attack weight per source (None: every attack row weighs 1).
ATTACK_SHARE: dict[str, float] | None = None
# v6 attempt (docs/scan-classifier-v6-plan.md; off in the shipped v4): a weight multiplier per attack source, the
# attacks' total then scaled back to their count (variant A: {"synthetic-embedded": 2.0}), and attacks longer than
# one window trained as their best window under a first fit instead of whole (variant B: "best").
ATTACK_WEIGHT: dict[str, float] = {}
ATTACK_WINDOWS = "whole"
# v7 attempt (docs/scan-classifier-v7-plan.md): static word embeddings (wordllama's l2_supercat, PyPI wheel, MIT),
# mean-pooled per window over the LLaMA pieces of the stage's tokens. None: v4. "A": a linear head on the embeddings
# alone; "B": A and v4 fused per window (mean of calibrated log-odds); "C": one linear model on both feature sets;
# "all": every variant, for benchmarks/scan_classifier_dev.py --embedding.
EMBEDDING: str | None = None
EMB_C = 1.0
EMB_JOINT = True
EMBEDDING_SHA256 = {  # the files of wordllama 0.4.0.post1, checked when read
    "tokenizer": "93248f2a9ec36c7b35f700a033d5f36228aae48db61aee31007fa49062cdeb68",
    "weights": "64b47a2dc493cb8e85944076601189739852d7b64e0e1eedcb1937a251cd9fd5",
}
# v8 attempt (docs/scan-classifier-v8-plan.md): a small MLP on the hashed features, its first layer a per-bucket
# embedding over 2**MLP_BITS buckets. None: v4. A variant name (MLP_VARIANTS) trains that one in place of v4's
# attack-versus-benign margin; "all": v4 and every variant, for benchmarks/scan_classifier_dev.py --mlp.
# All settings below were fixed in the plan before any figure was computed.
MLP: str | None = None
MLP_VARIANTS = {"A": (32, False), "B": (32, True), "C": (64, False), "D": (64, True)}  # hidden units, skip column
MLP_BITS = 17
MLP_EPOCHS = 8
MLP_BATCH = 256
MLP_LR = 0.002
MLP_BETAS = (0.9, 0.999)
MLP_EPS = 1e-8
MLP_L2 = 1e-6
MLP_INIT = 0.05
# v14 attempt (docs/scan-classifier-v14-plan.md): a model2vec static model distilled from the MiniLM wheel, each
# window's normalised summed WordPiece vector. None: v4. "all": v4 and the variants A (frozen table, logistic
# regression), B (A and v4 fused per window), C (table fine-tuned with a one-hidden-layer head, PyTorch) and D (C and
# v4 fused), for benchmarks/scan_classifier_dev.py --static. All settings below were fixed in the plan before any
# figure was computed.
STATIC: str | None = None
STATIC_C = 1.0
STATIC_HIDDEN = 256
STATIC_EPOCHS = 5
STATIC_BATCH = 512
STATIC_LR = 1e-3
# Chat sources whose consecutive lines also train as 2 KB transcripts (their windows), within the group's share.
LONG_CHAT_SOURCES = ("chatterbot", "chitchat")
LONG_CHAT_CHARS = 2048
# v4 adds technical prose (Django's docstrings and comments), non-English UI text (Django's translations) and
# non-English everyday language (OpenVoiceOS skills) on top of v3's shares, which the normalisation then scales down.
# v5's candidate sources (off: scan_corpus.V5_SOURCES; groups absent from the data take no share) had their benign
# counterparts (raginject's documents without their payloads and its users' questions, honeypot-ai's control page
# and look-alikes, lightguard-agent's controls) at small shares set before training, like agentprobe's and aib's.
BENIGN_SHARE = {"synthetic": 0.32, "chatterbot": 0.18, "chitchat": 0.14, "stdlib": 0.22, "spikee": 0.07,
                "aib": 0.02, "agentprobe": 0.05, "django": 0.10, "djangoi18n": 0.06, "ovos": 0.08,
                "raginject": 0.03, "honeypot": 0.01, "lightguard": 0.005}
# v11 attempt (docs/scan-classifier-v11-plan.md, fixed before training; used when scan_corpus.V11_TRAIN is on): the
# six packages looked at before v10 train; raginject and lightguard keep v5's shares, honeypot-ai has one control
# page left (v5: 0.01 for 13 pages), aicu-scanner's 14 "legitimate tasks" get 0.01; agentred and nullsec have no
# benign texts.
V11_BENIGN_SHARE = {**BENIGN_SHARE, "honeypot": 0.002, "aicu": 0.01}


def _matrix(rows: list[tuple[list[int], int]], bits: int):
    """One row per window: its bucket ids (repeats add up), each 1/sqrt(the window's distinct tokens and
    bigrams), as served."""
    from scipy.sparse import csr_matrix

    indptr = np.cumsum([0] + [len(ids) for ids, _n in rows])
    indices = np.fromiter((i for ids, _n in rows for i in ids), dtype=np.int64, count=int(indptr[-1]))
    data = np.repeat([1.0 / np.sqrt(max(n, 1)) for _ids, n in rows], [len(ids) for ids, _n in rows])
    m = csr_matrix((data, indices, indptr), shape=(len(rows), 1 << bits))
    m.sum_duplicates()
    return m


def _long_chat(rows: list[dict]) -> list[dict]:
    """Consecutive benign chat lines of one source joined into documents of 2 KB or more.

    The stage scores a long text in many windows and keeps the best, so a long ordinary conversation has many
    chances to pass the threshold; single chat lines alone do not teach the model what windows spanning
    several turns look like (on the development split they did not: 62 % of 2 KB chat transcripts passed).
    """
    out, current = [], collections.defaultdict(list)
    for r in rows:
        if r["label"] != "benign" or _source_group(r["source"]) not in LONG_CHAT_SOURCES:
            continue
        lines = current[r["source"]]
        lines.append(r["text"])
        if sum(len(t) + 1 for t in lines) >= LONG_CHAT_CHARS:
            out.append({**r, "text": "\n".join(lines)})
            lines.clear()
    return out


def blas_info() -> list[dict]:
    """The BLAS libraries scipy and scikit-learn loaded, with the kernel each picked (a build depends on it)."""
    import scipy.sparse  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    from threadpoolctl import threadpool_info

    keys = ("internal_api", "version", "architecture", "threading_layer", "num_threads", "filepath")
    return [{k: d.get(k) for k in keys} for d in threadpool_info() if d.get("user_api") == "blas"]


def _val_fold(text: str) -> bool:
    return hashlib.sha256(text.encode()).digest()[0] < 52  # about 20 %, stable across runs and machines


def _source_group(source: str) -> str:
    return source.split("-")[0]


def train(seed: int = SEED, bits: int = BITS, log=print, rows: list[dict] | None = None, c_binary: float = C_BINARY,
          benign_share: dict[str, float] | None = None, attack_share: dict[str, float] | None = None,
          attack_weight: dict[str, float] | None = None, attack_windows: str | None = None,
          embedding: str | None = None, mlp: str | None = None, static: str | None = None):
    """Fit on the rows whose split is ``train`` (default: scan_corpus.build's); ``rows``, ``c_binary`` and
    ``benign_share`` are for experiments (benchmarks/scan_classifier_dev.py), the defaults make the shipped model.

    BLAS runs on one thread: the solvers' sums (liblinear's and lbfgs') go through OpenBLAS, whose results
    depend on how many threads split them (on this 2-core machine, one and two threads gave two different
    builds, each repeatable), so a build must not depend on the machine's core count.
    """
    import scipy.sparse  # noqa: F401  (loaded first: a limit applies to the BLAS libraries loaded when it is set)
    import sklearn.linear_model  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _train(seed, bits, log, rows, c_binary, benign_share, attack_share,
                      ATTACK_WEIGHT if attack_weight is None else attack_weight,
                      ATTACK_WINDOWS if attack_windows is None else attack_windows,
                      EMBEDDING if embedding is None else embedding, MLP if mlp is None else mlp,
                      STATIC if static is None else static)


def _best_windows(texts: list, expanded: list, coef: np.ndarray, bits: int) -> int:
    """Replace each attack longer than one window by its best window under ``coef`` (in place); returns how many."""
    n = 0
    for i, (_ids, r) in enumerate(expanded):
        if r["label"] != "attack":
            continue
        wins = clf.window_ids(r["text"], bits, WINDOW, STRIDE)
        if len(wins) < 2:
            continue
        margins = [float(coef[ids].sum()) / np.sqrt(max(k, 1)) for ids, k in wins]
        texts[i] = wins[int(np.argmax(margins))]
        n += 1
    return n


def _window_pieces(window_toks: list[list[str]], pieces) -> tuple[np.ndarray, np.ndarray]:
    """Every window's piece ids (``pieces.ids`` of each token, cached per token), flat, and each window's start
    in them (plus the end): v7's LLaMA pieces and v14's WordPieces."""
    cache: dict[str, list[int]] = {}
    flat: list[int] = []
    offsets = [0]
    for toks in window_toks:
        for t in toks:
            ids = cache.get(t)
            if ids is None:
                ids = cache[t] = pieces.ids(t)
            flat.extend(ids)
        offsets.append(len(flat))
    return np.array(flat, dtype=np.int64), np.array(offsets, dtype=np.int64)


def _emb_features(window_toks: list[list[str]], pieces, E: np.ndarray) -> np.ndarray:
    """One row per window: the mean LLaMA piece embedding over its tokens' pieces (as served, v7)."""
    from scipy.sparse import csr_matrix

    indices, indptr = _window_pieces(window_toks, pieces)
    counts = np.diff(indptr)
    M = csr_matrix((np.ones(len(indices)), indices, indptr), shape=(len(window_toks), E.shape[0]))
    M.sum_duplicates()
    return np.asarray(M @ E) / np.maximum(counts, 1)[:, None]


def _embedding_heads(texts, emb_toks, y, sw, X, seed, c_binary, bits, log, t0):
    """v7 candidates (docs/scan-classifier-v7-plan.md): A, logistic regression on the standardised mean piece
    embedding of each window; C, v4's hashed features and those 256 columns in one liblinear fit. Returns, per
    variant, its per-piece score vector and its margin's constant (the piece mean's score is sum(s[p]) / N)."""
    import scan_classifier_embedding as embmod
    from scipy.sparse import csr_matrix, hstack
    from sklearn.linear_model import LogisticRegression

    pieces = embmod.Pieces(EMBEDDING_SHA256["tokenizer"])
    E16, _digest = embmod.load_matrix(EMBEDDING_SHA256["weights"])
    E = E16.astype(np.float64)
    F = _emb_features(emb_toks, pieces, E)
    mu, sd = F.mean(axis=0), F.std(axis=0)
    sd[sd == 0] = 1.0
    Fs = (F - mu) / sd
    log(f"embedding features: {F.shape} ({time.perf_counter() - t0:.1f}s)")
    a_head = LogisticRegression(C=EMB_C, solver="lbfgs", max_iter=2000, random_state=seed)
    a_head.fit(Fs, y, sample_weight=sw)
    wa = a_head.coef_[0] / sd
    out = {"A": (E @ wa, float(a_head.intercept_[0]) - float(wa @ mu), None, None)}
    log(f"A fitted ({time.perf_counter() - t0:.1f}s)")
    if EMB_JOINT:
        Xj = hstack([X, csr_matrix(Fs)], format="csr")
        joint = LogisticRegression(C=c_binary, solver="liblinear", max_iter=1000, random_state=seed)
        joint.fit(Xj, y, sample_weight=sw)
        wc = joint.coef_[0][1 << bits:] / sd
        out["C"] = (E @ wc, -float(wc @ mu), joint.coef_[0][: 1 << bits], float(joint.intercept_[0]))
        log(f"C fitted ({time.perf_counter() - t0:.1f}s)")
    return pieces, out


def _mlp_fit(X, y: np.ndarray, sw: np.ndarray, hidden: int, skip: bool, seed: int, log, t0: float):
    """v8: fit ``w2 . relu(x E[:, :hidden] + b1) + b2 (+ x E[:, hidden])`` by Adam (lazy for E's rows) on the
    weighted logistic loss; numpy, one thread, deterministic. Returns E (float32), b1, w2, b2."""
    from scipy.sparse import csr_matrix

    rng = np.random.default_rng(seed)
    n, nb = X.shape
    cols = hidden + (1 if skip else 0)
    E = (rng.standard_normal((nb, cols), dtype=np.float32) * np.float32(MLP_INIT))
    if skip:
        E[:, hidden] = 0.0
    b1 = np.zeros(hidden, dtype=np.float32)
    w2 = (rng.standard_normal(hidden, dtype=np.float32) / np.float32(np.sqrt(hidden)))
    b2 = np.zeros(1, dtype=np.float32)
    mE, vE = np.zeros_like(E), np.zeros_like(E)
    tE = np.zeros(nb, dtype=np.int64)
    dense = [b1, w2, b2]
    mD = [np.zeros_like(a) for a in dense]
    vD = [np.zeros_like(a) for a in dense]
    beta1, beta2 = MLP_BETAS
    X = X.astype(np.float32).tocsr()
    yf = y.astype(np.float32)
    wf = (sw / sw.mean()).astype(np.float32)
    step = 0
    for epoch in range(MLP_EPOCHS):
        perm = rng.permutation(n)
        loss_sum = 0.0
        for s in range(0, n, MLP_BATCH):
            idx = perm[s : s + MLP_BATCH]
            Xb = X[idx]
            used, inv = np.unique(Xb.indices, return_inverse=True)
            Xs = csr_matrix((Xb.data, inv.astype(np.int64), Xb.indptr), shape=(len(idx), len(used)))
            Eu = E[used]
            A = Xs @ Eu
            pre = A[:, :hidden] + b1
            act = np.maximum(pre, 0.0)
            z = act @ w2 + b2[0]
            if skip:
                z = z + A[:, hidden]
            p = 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))
            yb, wb = yf[idx], wf[idx]
            loss_sum += float(np.sum(wb * (np.logaddexp(0.0, z) - yb * z)))
            g = ((p - yb) * wb / np.float32(len(idx))).astype(np.float32)  # d loss / d z
            gw2 = act.T @ g + np.float32(MLP_L2) * w2
            gb2 = np.array([g.sum()], dtype=np.float32)
            dpre = np.outer(g, w2) * (pre > 0)
            gb1 = dpre.sum(axis=0)
            dA = np.concatenate([dpre, g[:, None]], axis=1) if skip else dpre
            gE = (Xs.T @ dA).astype(np.float32) + np.float32(MLP_L2) * Eu
            step += 1
            for a, ga, m_, v_ in zip(dense, (gb1, gw2, gb2), mD, vD, strict=True):
                m_ *= beta1
                m_ += (1 - beta1) * ga
                v_ *= beta2
                v_ += (1 - beta2) * ga * ga
                a -= MLP_LR * (m_ / (1 - beta1**step)) / (np.sqrt(v_ / (1 - beta2**step)) + MLP_EPS)
            tE[used] += 1
            t = tE[used][:, None].astype(np.float32)
            mu = mE[used] * beta1 + (1 - beta1) * gE
            vu = vE[used] * beta2 + (1 - beta2) * gE * gE
            mE[used] = mu
            vE[used] = vu
            E[used] = Eu - np.float32(MLP_LR) * (mu / (1 - beta1**t)) / (np.sqrt(vu / (1 - beta2**t)) + MLP_EPS)
        log(f"mlp H={hidden} skip={skip}: epoch {epoch + 1}, mean weighted loss {loss_sum / wf.sum():.5f} "
            f"({time.perf_counter() - t0:.1f}s)")
    return E, b1, w2, float(b2[0])


def _mlp_variants(X18, y, sw, val_rows, val_y, wanted, seed, log, t0, W16, b, common):
    """v8: each wanted variant fitted, stored in float16 and Platt-calibrated through the serving path."""
    from scipy.sparse import csr_matrix
    from sklearn.linear_model import LogisticRegression

    mask = (1 << MLP_BITS) - 1
    X = csr_matrix((X18.data, X18.indices & mask, X18.indptr), shape=(X18.shape[0], 1 << MLP_BITS))
    X.sum_duplicates()
    out = {}
    for name in wanted:
        hidden, skip = MLP_VARIANTS[name]
        E, b1, w2, b2 = _mlp_fit(X, y, sw, hidden, skip, seed, log, t0)
        mlp = variants.Mlp(bits=MLP_BITS, E=E.astype(np.float16).astype(np.float32), b1=b1.astype(np.float32),
                           w2=w2.astype(np.float32), b2=b2, hidden=hidden, skip=skip)
        raw_w = variants.MlpWeights.from_matrix(W16, b=b, platt=(1.0, 0.0), mlp=mlp, **common)
        m = variants.classifier(raw_w)
        raw = np.array([m.score(r["text"], family=False).raw for r in val_rows])
        pl = LogisticRegression(C=1e6, solver="lbfgs").fit(raw[:, None], val_y)
        platt = (float(pl.coef_[0][0]), float(pl.intercept_[0]))
        log(f"mlp {name}: platt {platt[0]:.4f}, {platt[1]:.4f} ({time.perf_counter() - t0:.1f}s)")
        out[name] = (platt, variants.MlpWeights.from_matrix(W16, b=b, platt=platt, mlp=mlp, **common))
    return out


def _static_features(flat: np.ndarray, offsets: np.ndarray, E: np.ndarray) -> np.ndarray:
    """v14: one row per window, the L2-normalised sum of its pieces' vectors (as served; zero for no piece)."""
    from scipy.sparse import csr_matrix

    M = csr_matrix((np.ones(len(flat)), flat, offsets), shape=(len(offsets) - 1, E.shape[0]))
    M.sum_duplicates()
    S = np.asarray(M @ E.astype(np.float64))
    return S / np.maximum(np.linalg.norm(S, axis=1), 1e-12)[:, None]


def _static_fit(flat, offsets, y, sw, E16: np.ndarray, seed: int, log, t0: float):
    """v14 C: the table (from the distilled float16 values) and a one-hidden-layer head fitted end to end on the
    weighted logistic loss; PyTorch, one thread, deterministic. Returns E (float32), W1, b1, w, b."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    dims = E16.shape[1]
    emb = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(E16.astype(np.float32)), freeze=False, mode="sum")
    hid = torch.nn.Linear(dims, STATIC_HIDDEN)
    out = torch.nn.Linear(STATIC_HIDDEN, 1)
    torch.nn.init.kaiming_uniform_(hid.weight, nonlinearity="relu")  # model2vec's head initialisation
    torch.nn.init.zeros_(hid.bias)
    torch.nn.init.xavier_uniform_(out.weight)
    torch.nn.init.zeros_(out.bias)
    params = [*emb.parameters(), *hid.parameters(), *out.parameters()]
    opt = torch.optim.Adam(params, lr=STATIC_LR)
    gen = torch.Generator().manual_seed(seed)
    n = len(offsets) - 1
    lengths = np.diff(offsets)
    yt = torch.from_numpy(y.astype(np.float32))
    wt = torch.from_numpy((sw / sw.mean()).astype(np.float32))
    for epoch in range(STATIC_EPOCHS):
        perm = torch.randperm(n, generator=gen).numpy()
        loss_sum = 0.0
        for s in range(0, n, STATIC_BATCH):
            idx = perm[s : s + STATIC_BATCH]
            ids = np.concatenate([flat[offsets[i] : offsets[i + 1]] for i in idx])
            starts = np.concatenate([[0], np.cumsum(lengths[idx])[:-1]]).astype(np.int64)
            U = F.normalize(emb(torch.from_numpy(ids), torch.from_numpy(starts)), dim=1, eps=1e-12)
            z = out(torch.relu(hid(U))).squeeze(1)
            it = torch.from_numpy(idx)
            losses = F.binary_cross_entropy_with_logits(z, yt[it], reduction="none") * wt[it]
            loss = losses.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += float(losses.detach().sum())
        log(f"static C: epoch {epoch + 1}, mean weighted loss {loss_sum / float(wt.sum()):.5f} "
            f"({time.perf_counter() - t0:.1f}s)")
    with torch.no_grad():
        E = emb.weight.numpy().astype(np.float32)
        W1 = hid.weight.numpy().T.astype(np.float32).copy()
        b1 = hid.bias.numpy().astype(np.float32).copy()
        w = out.weight.numpy()[0].astype(np.float32).copy()
        b = float(out.bias.numpy()[0])
    return E, W1, b1, w, b


def _static_variants(static_toks, y, sw, val_rows, val_y, seed, log, t0, W16, b, v4_platt, common):
    """v14 (docs/scan-classifier-v14-plan.md): A, B, C and D, each Platt-calibrated through the serving path."""
    import scan_classifier_static as statmod
    from sklearn.linear_model import LogisticRegression

    table = statmod.StaticTable(statmod.distill(log=log))
    log(f"static table: {table.vectors.shape} float16, sha256 {table.sha256}, tokenizer {table.tokenizer_sha256}")
    flat, offsets = _window_pieces(static_toks, table)
    E16 = table.vectors
    E_frozen = E16.astype(np.float32)
    log(f"static pieces: {len(flat)} in {len(offsets) - 1} windows ({time.perf_counter() - t0:.1f}s)")

    def calibrated(head):
        raw_w = variants.StaticWeights.from_matrix(W16, b=b, platt=(1.0, 0.0), static=head, pieces=table, **common)
        m = variants.classifier(raw_w)
        raw = np.array([m.score(r["text"], family=False).raw for r in val_rows])
        pl = LogisticRegression(C=1e6, solver="lbfgs").fit(raw[:, None], val_y)
        return float(pl.coef_[0][0]), float(pl.intercept_[0])

    def weights(head, platt):
        return variants.StaticWeights.from_matrix(W16, b=b, platt=platt, static=head, pieces=table, **common)

    a4, c4 = v4_platt
    out = {}
    # A: the frozen table, logistic regression on the standardised normalised sums (folded into one linear head)
    Fx = _static_features(flat, offsets, E_frozen)
    mu, sd = Fx.mean(axis=0), Fx.std(axis=0)
    sd[sd == 0] = 1.0
    lr = LogisticRegression(C=STATIC_C, solver="lbfgs", max_iter=2000, random_state=seed)
    lr.fit((Fx - mu) / sd, y, sample_weight=sw)
    wa = (lr.coef_[0] / sd).astype(np.float32)
    head_a = variants.StaticHead(E=E_frozen, W1=None, b1=None, w=wa,
                                 b=float(lr.intercept_[0]) - float(wa.astype(np.float64) @ mu), mix=(0.0, 1.0, 0.0))
    pa = calibrated(head_a)
    log(f"static A fitted, platt {pa[0]:.4f}, {pa[1]:.4f} ({time.perf_counter() - t0:.1f}s)")
    out["A"] = weights(head_a, pa)
    # B: the mean of v4's and A's calibrated log-odds per window; nothing fitted beyond A and v4
    out["B"] = weights(variants.StaticHead(E=E_frozen, W1=None, b1=None, w=wa, b=head_a.b,
                                           mix=(a4 / 2, pa[0] / 2, (c4 + pa[1]) / 2)), (1.0, 0.0))
    # C: the table fine-tuned with its head; D: C and v4 fused as B
    E, W1, b1, w, bc = _static_fit(flat, offsets, y, sw, E16, seed, log, t0)
    E = E.astype(np.float16).astype(np.float32)  # every figure with the float16 table a model would ship
    head_c = variants.StaticHead(E=E, W1=W1, b1=b1, w=w, b=bc, mix=(0.0, 1.0, 0.0))
    pc = calibrated(head_c)
    log(f"static C calibrated, platt {pc[0]:.4f}, {pc[1]:.4f} ({time.perf_counter() - t0:.1f}s)")
    out["C"] = weights(head_c, pc)
    out["D"] = weights(variants.StaticHead(E=E, W1=W1, b1=b1, w=w, b=bc, mix=(a4 / 2, pc[0] / 2, (c4 + pc[1]) / 2)),
                       (1.0, 0.0))
    return out


def _train(seed, bits, log, rows, c_binary, benign_share, attack_share, attack_weight=None, attack_windows="whole",
           embedding=None, mlp=None, static=None):
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    # every row: v11's training sources need the held-out packages too (their texts are kept out of training)
    rows = scan_corpus.build(seed, enlarged_heldout=True) if rows is None else rows
    train_rows = [r for r in rows if r["split"] == "train"]
    fit_rows, val_rows = [], []
    for r in train_rows:
        (val_rows if _val_fold(r["text"]) else fit_rows).append(r)

    texts, labels, fams, weights = [], [], [], []
    # Class balance: attacks and benign weigh the same in total; within benign, each source group gets a fixed
    # share of the benign weight, whatever its row count (set once, before any held-out figure was computed).
    if benign_share is None:
        benign_share = V11_BENIGN_SHARE if scan_corpus.V11_TRAIN else BENIGN_SHARE
    expanded = []  # (bucket ids, row): attacks whole, benign texts as the windows the stage will score
    emb_toks = []  # v7 and v14: the same windows' tokens
    for r in fit_rows + (_long_chat(fit_rows) if LONG_CHAT_SOURCES else []):
        for row in clf.window_ids(r["text"], bits, WINDOW, STRIDE, whole=r["label"] == "attack"):
            expanded.append((row, r))
        if embedding or static:
            emb_toks += variants.window_tokens(r["text"], WINDOW, STRIDE, whole=r["label"] == "attack")
    n_attack = sum(1 for _, r in expanded if r["label"] == "attack")
    per_group = collections.Counter(_source_group(r["source"]) for _, r in expanded if r["label"] == "benign")
    present = sum(benign_share[g] for g in per_group)
    attack_share = ATTACK_SHARE if attack_share is None else attack_share
    per_source = collections.Counter(r["source"] for _, r in expanded if r["label"] == "attack")
    attack_present = sum(attack_share.get(s, 0.0) for s in per_source) if attack_share else 0.0
    for row, r in expanded:
        texts.append(row)
        is_attack = r["label"] == "attack"
        labels.append(1 if is_attack else 0)
        fams.append(r["family"])
        if is_attack:
            share = attack_share.get(r["source"]) if attack_share else None
            weights.append(1.0 if share is None else share / attack_present * n_attack / per_source[r["source"]])
        else:
            g = _source_group(r["source"])
            weights.append(benign_share[g] / present * n_attack / per_group[g])
    if attack_weight:
        for i, (_row, r) in enumerate(expanded):
            if r["label"] == "attack":
                weights[i] *= attack_weight.get(r["source"], 1.0)
        total = sum(w for w, lab in zip(weights, labels, strict=True) if lab == 1)
        weights = [w * n_attack / total if lab == 1 else w for w, lab in zip(weights, labels, strict=True)]
    X = _matrix(texts, bits)
    y = np.array(labels)
    sw = np.array(weights)
    log(f"features: {X.shape[0]} rows x 2**{bits} buckets, {X.nnz} non-zeros ({time.perf_counter() - t0:.1f}s)")

    binary = LogisticRegression(C=c_binary, solver="liblinear", max_iter=1000, random_state=seed)
    binary.fit(X, y, sample_weight=sw)
    if attack_windows == "best":
        n = _best_windows(texts, expanded, binary.coef_[0], bits)
        X = _matrix(texts, bits)
        log(f"first fit done; {n} long attacks replaced by their best window ({time.perf_counter() - t0:.1f}s)")
        binary = LogisticRegression(C=c_binary, solver="liblinear", max_iter=1000, random_state=seed)
        binary.fit(X, y, sample_weight=sw)
    elif attack_windows != "whole":
        raise ValueError(f"attack_windows: {attack_windows!r}")
    att = y == 1
    family = LogisticRegression(C=C_FAMILY, solver="lbfgs", max_iter=2000, random_state=seed)
    fam_y = np.array([clf.FAMILIES.index(f) for f, a in zip(fams, att, strict=True) if a])
    family.fit(X[att], fam_y)
    log(f"fitted in {time.perf_counter() - t0:.1f}s")

    W = np.zeros((1 << bits, 1 + len(clf.FAMILIES)), dtype=np.float32)
    W[:, 0] = binary.coef_[0]
    W[:, 1:] = family.coef_.T
    b = np.concatenate([[binary.intercept_[0]], family.intercept_]).astype(np.float32)
    W16 = W.astype(np.float16)  # shipped precision; everything below scores with exactly what ships

    # Platt scaling on the validation fold's raw margins, through the real inference path (windows and all).
    uncal = clf._Weights.from_matrix(W16, bits=bits, b=b, platt=(1.0, 0.0), version=VERSION, name=NAME,
                         threshold=0.5, bands=BANDS, window=WINDOW, stride=STRIDE)
    model = clf.InjectionClassifier(uncal)
    val_raw = np.array([model.score(r["text"]).raw for r in val_rows])
    val_y = np.array([r["label"] == "attack" for r in val_rows], dtype=int)
    platt = LogisticRegression(C=1e6, solver="lbfgs")
    platt.fit(val_raw[:, None], val_y)
    a, c = float(platt.coef_[0][0]), float(platt.intercept_[0])
    log(f"platt: p = sigmoid({a:.4f} * margin + {c:.4f}) on {len(val_rows)} validation rows")
    weights = clf._Weights.from_matrix(W16, bits=bits, b=b, platt=(a, c), version=VERSION, name=NAME,
                           threshold=THRESHOLD, bands=BANDS, window=WINDOW, stride=STRIDE)
    if mlp:
        common = dict(bits=bits, version=VERSION, name=NAME, threshold=THRESHOLD, bands=BANDS, window=WINDOW,
                      stride=STRIDE)
        wanted = list(MLP_VARIANTS) if mlp == "all" else [mlp]
        found = _mlp_variants(X, y, sw, val_rows, val_y, wanted, seed, log, t0, W16, b, common)
        if mlp == "all":
            return rows, val_rows, W16, b, (a, c), {"v4": weights, **{k: v[1] for k, v in found.items()}}
        platt, weights = found[mlp]
        return rows, val_rows, W16, b, platt, weights
    if static:
        if static != "all":
            raise ValueError(f"static: {static!r} (only 'all', for benchmarks/scan_classifier_dev.py --static)")
        common = dict(bits=bits, version=VERSION, name=NAME, threshold=THRESHOLD, bands=BANDS, window=WINDOW,
                      stride=STRIDE)
        found = _static_variants(emb_toks, y, sw, val_rows, val_y, seed, log, t0, W16, b, (a, c), common)
        return rows, val_rows, W16, b, (a, c), {"v4": weights, **found}
    if not embedding:
        return rows, val_rows, W16, b, (a, c), weights

    pieces, heads = _embedding_heads(texts, emb_toks, y, sw, X, seed, c_binary, bits, log, t0)
    common = dict(bits=bits, version=VERSION, name=NAME, threshold=THRESHOLD, bands=BANDS, window=WINDOW,
                  stride=STRIDE, pieces=pieces)

    def calibrated(W, bb, emb, mix):
        """Platt scaling of a variant's margins on the validation fold, through the serving path."""
        raw_w = variants.EmbeddingWeights.from_matrix(W, b=bb, platt=(1.0, 0.0), emb=emb, mix=mix, **common)
        m = variants.classifier(raw_w)
        raw = np.array([m.score(r["text"], family=False).raw for r in val_rows])
        pl = LogisticRegression(C=1e6, solver="lbfgs").fit(raw[:, None], val_y)
        return float(pl.coef_[0][0]), float(pl.intercept_[0])

    candidates = {"v4": (W16, b, (a, c), weights)}
    s_a, ce_a, _w, _b = heads["A"]
    s_a = s_a.astype(np.float32)
    pa = calibrated(W16, b, s_a, (0.0, 1.0, ce_a))
    candidates["A"] = (W16, b, pa, variants.EmbeddingWeights.from_matrix(W16, b=b, platt=pa, emb=s_a,
                                                                         mix=(0.0, 1.0, ce_a), **common))
    # B: the mean of the two calibrated log-odds, per window; nothing fitted beyond A and v4
    mix_b = (a / 2, pa[0] / 2, (c + pa[0] * ce_a + pa[1]) / 2)
    candidates["B"] = (W16, b, (1.0, 0.0), variants.EmbeddingWeights.from_matrix(W16, b=b, platt=(1.0, 0.0), emb=s_a,
                                                                                 mix=mix_b, **common))
    if "C" in heads:
        s_c, ce_c, w0, b0 = heads["C"]
        Wc = W.copy()
        Wc[:, 0] = w0
        Wc16 = Wc.astype(np.float16)
        bc = b.copy()
        bc[0] = b0
        s_c = s_c.astype(np.float32)
        pc = calibrated(Wc16, bc, s_c, (1.0, 1.0, ce_c))
        candidates["C"] = (Wc16, bc, pc, variants.EmbeddingWeights.from_matrix(Wc16, b=bc, platt=pc, emb=s_c,
                                                                               mix=(1.0, 1.0, ce_c), **common))
    log(f"variants calibrated ({time.perf_counter() - t0:.1f}s)")
    if embedding == "all":
        return rows, val_rows, W16, b, (a, c), {k: v[3] for k, v in candidates.items()}
    W16, b, (a, c), weights = candidates[embedding]
    return rows, val_rows, W16, b, (a, c), weights


def evaluate(model: clf.InjectionClassifier, rows: list[dict]) -> dict:
    """Recall per family, FPR per source group, and recall at the threshold giving FPR <= 0.02."""
    scores = np.array([model.best(r["text"])[0].probability for r in rows])  # the scan path, decoded views too
    is_attack = np.array([r["label"] == "attack" for r in rows])
    out: dict = {"n_attack": int(is_attack.sum()), "n_benign": int((~is_attack).sum())}
    hit = scores >= model.threshold
    out["recall"] = round(float(hit[is_attack].mean()), 4) if is_attack.any() else None
    out["fpr"] = round(float(hit[~is_attack].mean()), 4) if (~is_attack).any() else None
    fam = collections.defaultdict(list)
    for r, h in zip(rows, hit, strict=True):
        if r["label"] == "attack":
            fam[r["family"]].append(h)
    out["recall_by_family"] = {f: round(float(np.mean(v)), 4) for f, v in sorted(fam.items())}
    src = collections.defaultdict(list)
    for r, h in zip(rows, hit, strict=True):
        if r["label"] == "benign":
            src[_source_group(r["source"])].append(h)
    out["fpr_by_source"] = {s: round(float(np.mean(v)), 4) for s, v in sorted(src.items())}
    if is_attack.any() and (~is_attack).any():
        neg = np.sort(scores[~is_attack])[::-1]
        k = int(np.floor(0.02 * len(neg)))  # at most k false positives
        thr = float(np.nextafter(neg[k], 1.0)) if k < len(neg) else 0.0
        out["recall_at_fpr_0.02"] = round(float((scores[is_attack] >= thr).mean()), 4)
        out["threshold_at_fpr_0.02"] = round(thr, 4)
    return out


def _npz_bytes(W16: np.ndarray, b: np.ndarray, platt: tuple[float, float], bits: int) -> bytes:
    """Byte-identical output for identical weights: fixed member order and timestamps, no pickles."""
    meta = json.dumps({"bits": bits, "families": list(clf.FAMILIES), "version": VERSION, "platt": list(platt)},
                      sort_keys=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in (("W", W16), ("b", b), ("meta", np.array(meta))):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=clf.MODEL_DIR, help="directory for injection-clf.npz/.json")
    ap.add_argument("--check", action="store_true", help="train in memory; exit 1 if the shipped weights differ")
    ap.add_argument("--v11", action="store_true",
                    help="the v11 attempt (not shipped): the six packages looked at before v10 as training data, "
                         "version 5, threshold 0.53 (use with --out elsewhere)")
    args = ap.parse_args(argv)
    if args.v11:
        global VERSION, THRESHOLD
        scan_corpus.V11_TRAIN = True
        VERSION, THRESHOLD = V11_VERSION, V11_THRESHOLD
    t0 = time.perf_counter()
    rows, val_rows, W16, b, platt, weights = train()
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        blas = blas_info()  # as train() ran it: one thread; the kernel (architecture) decides the build
    blob = _npz_bytes(W16, b, platt, BITS)
    digest = hashlib.sha256(blob).hexdigest()
    model = variants.classifier(weights)
    # the original held-out split only (v10's and v11's other held-out sources: scan_classifier_bench.py, once)
    heldout = [r for r in rows if r["split"] == "heldout" and r["source"] not in scan_corpus.V10_HELDOUT]
    figures = {
        "validation (synthetic/chatterbot/stdlib, 20% by text hash)": evaluate(model, val_rows),
        "held-out by source (bastioncorpus, jailbreak-corpus-mini, chatterbot es/de/it/pt, stdlib email/xml/http)":
            evaluate(model, heldout),
        "held-out bastioncorpus only": evaluate(model, [r for r in heldout if r["source"] == "bastioncorpus"]),
    }
    counts = collections.Counter((r["source"], r["split"], r["label"]) for r in rows)
    by_source: dict = {}
    for (src, split, label), n in sorted(counts.items()):
        group = src if src in scan_corpus.V10_HELDOUT else _source_group(src)  # agent-guardian, agent-redteam...
        by_source.setdefault(group, {}).setdefault(split, {})[label] = \
            by_source.get(group, {}).get(split, {}).get(label, 0) + n
    import sklearn

    card = {
        "name": NAME,
        "version": VERSION,
        "rule_id": f"ml.{NAME}@{VERSION}",
        "sha256": digest,
        "threshold": THRESHOLD,
        "severity_bands": {"MEDIUM": BANDS[0], "HIGH": BANDS[1]},
        "severity_bands_meaning": "calibrated probability at which MEDIUM and HIGH start; below: LOW; never CRITICAL",
        "window": WINDOW,
        "stride": STRIDE,
        "families": list(clf.FAMILIES),
        "model": {
            "features": f"tokens (words, punctuation runs; lower case, digits as 0): each token and its byte "
                        f"3/4/5-grams, token bigrams, crc32-hashed into 2**{BITS} buckets; presence of distinct tokens "
                        f"and bigrams per {STRIDE}-token block / sqrt(their number); windows of {WINDOW} tokens",
            "heads": f"logistic regression attack-vs-benign (L2, C={C_BINARY:g}) + multinomial family head "
                     f"(C={C_FAMILY:g})",
            "calibration": {"method": "Platt", "a": platt[0], "b": platt[1], "fitted_on": "validation fold"},
            "weights_dtype": "float16",
        },
        "training": {
            "seed": SEED,
            "script": "benchmarks/train_scan_classifier.py",
            "data": "benchmarks/scan_corpus.py",
            "rows_by_source": by_source,
            "licenses": {
                "synthetic": "Apache-2.0 (this repository)", "bastioncorpus": "MIT (PyPI bastioncorpus 0.6.0)",
                "jailbreak": "MIT (PyPI jailbreak-corpus-mini-py 0.1.0)",
                "chatterbot": "BSD-3-Clause (PyPI chatterbot-corpus 1.3.3)",
                "stdlib": "PSF-2.0 (docstrings of the Python standard library)",
                "spikee": "Apache-2.0 (PyPI spikee 0.9.2, data files only)",
                "hermes": "MIT (PyPI hermes-jailbench 0.2.2, attack templates only)",
                "aib": "MIT (PyPI agent-injection-bench 0.1.0)",
                "agentprobe": "MIT (PyPI agentprobe-injection 0.2.0a1, payloads, carriers and benign tasks only)",
                "chitchat": "MIT (PyPI chitchat-dataset 0.9.0)",
                "django": "BSD-3-Clause (PyPI Django 5.2.8, docstrings and code comments)",
                "djangoi18n": "BSD-3-Clause (PyPI Django 5.2.8, translated messages of its gettext catalogues)",
                "ovos": "Apache-2.0, BSD-3-Clause (ovos-skill-alerts), MIT (ovos-skill-randomness): PyPI "
                        "OpenVoiceOS skills, locale files only (scan_corpus.OVOS_SKILLS)",
                **{name: f"{lic} (PyPI {dist} {version}, data files only; " + (
                    "training (v11))" if scan_corpus.V11_TRAIN and name in scan_corpus.V11_TRAIN_SOURCES
                    else "held out (v10))")
                   for name, (dist, version, lic, _earlier) in scan_corpus.V10_HELDOUT.items()},
            },
            "v11": "the six packages looked at before v10 (raginject, honeypot-ai, nullsec-promptinject, "
                   "lightguard-agent, aicu-scanner, agentred) are training rows as v10's procedure built them; "
                   "agent-guardian, agent-redteam, agentic-redteam, aion-redteam and dual-llm-bench stay held out "
                   "(docs/scan-classifier-v11-plan.md)" if scan_corpus.V11_TRAIN else None,
            "blas": [{k: v for k, v in d.items() if k != "filepath"} for d in blas],
            "not_used": "garak, PyRIT, agentdojo, inspect-evals, giskard, HELM prompt collections; "
                        "the scan dev set (never trained on; it checks the threshold, and two of its false "
                        "positives led to the synthetic 'meta' hard negatives: docs/scan-classifier.md)",
            "development_split": "hermes, aib, agentprobe, chitchat (v4: and django.contrib, ovos-skill-alerts) "
                                 "held out by source to choose C, the window, the features, the chat transcripts "
                                 "and the benign shares (benchmarks/scan_classifier_dev.py), then trained on",
            "chat_transcripts": f"consecutive lines of {', '.join(LONG_CHAT_SOURCES)} joined into "
                                f"{LONG_CHAT_CHARS}-character documents, trained as their windows (benign)",
            "sklearn": sklearn.__version__,
            "numpy": np.__version__,
        },
        "figures": figures,
    }
    print(json.dumps(figures, indent=2))
    print(f"weights: {len(blob) / 1e6:.2f} MB sha256 {digest[:16]}  total {time.perf_counter() - t0:.1f}s")
    npz_path = args.out / f"{NAME}.npz"
    if args.check:
        shipped = npz_path.read_bytes() if npz_path.is_file() else b""
        same = hashlib.sha256(shipped).hexdigest() == digest
        print("shipped weights are reproduced bit for bit" if same else "shipped weights DIFFER from this build")
        return 0 if same else 1
    args.out.mkdir(parents=True, exist_ok=True)
    npz_path.write_bytes(blob)
    (args.out / f"{NAME}.json").write_text(json.dumps(card, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    print(f"wrote {npz_path} and {npz_path.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
