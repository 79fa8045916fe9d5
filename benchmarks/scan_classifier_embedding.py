"""Static word embeddings for the scan classifier's v7 attempt (not in the shipped model, not in the plugin).

The LLaMA 2 pieces of wordllama's l2_supercat, for ``benchmarks/scan_classifier_dev.py --embedding``: training
(``benchmarks/train_scan_classifier.py``) and the v7 scoring path (``benchmarks/scan_classifier_variants.py``).

The files come from the ``wordllama`` wheel (PyPI, MIT), read directly: the tokenizer with ``tokenizers``,
the 32,000 x 256 embedding matrix with ``safetensors`` (training only; a v7 model would ship one score per piece
in the classifier's own weights file). wordllama's package is never imported (its loader can download from a hub and
its ``__init__`` needs more packages); the wheel is found with ``importlib.util.find_spec``, which does not run
it. Nothing here touches the network.

The stage reads embeddings per stage token (its words and punctuation runs, already normalised): a token's
pieces are the vocabulary id of ``"▁" + token`` when that is one piece, else the tokenizer's encoding of the
token alone. The same function serves training and the v7 scoring path, which caches it per token.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

__all__ = ["INSTALL", "TOKENIZER_FILE", "WEIGHTS_FILE", "EmbeddingFilesError", "Pieces", "load_matrix", "wordllama_dir"]

TOKENIZER_FILE = "tokenizers/l2_supercat_tokenizer_config.json"
WEIGHTS_FILE = "weights/l2_supercat_256.safetensors"
# what installs the files and the readers (the train extra; not needed to serve the shipped v4 model)
INSTALL = "pip install -e '.[train]' && pip install --no-deps wordllama==0.4.0.post1"


class EmbeddingFilesError(Exception):
    """The embedding files or the libraries that read them are missing or not the expected ones (one line)."""


def wordllama_dir() -> Path:
    """The installed wordllama wheel's directory, without importing it."""
    spec = importlib.util.find_spec("wordllama")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingFilesError(f"the wordllama package is not installed ({INSTALL})")
    return Path(next(iter(spec.submodule_search_locations)))


def _checked(path: Path, sha256: str | None) -> bytes:
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise EmbeddingFilesError(f"{path}: unreadable ({exc.strerror or exc.__class__.__name__})") from None
    if sha256 and hashlib.sha256(blob).hexdigest() != sha256:
        raise EmbeddingFilesError(f"{path}: checksum mismatch (not the wordllama file the model was trained with)")
    return blob


class Pieces:
    """LLaMA 2 piece ids of a stage token, from wordllama's tokenizer file (offline)."""

    def __init__(self, tokenizer_sha256: str | None = None, directory: Path | None = None) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise EmbeddingFilesError(
                f"the tokenizers package is not installed ({INSTALL})") from None
        directory = wordllama_dir() if directory is None else directory
        self.path = directory / TOKENIZER_FILE
        blob = _checked(self.path, tokenizer_sha256)
        self.sha256 = hashlib.sha256(blob).hexdigest()
        try:
            self._tok = Tokenizer.from_str(blob.decode("utf-8"))
        except Exception as exc:  # noqa: BLE001  (a Rust-side parse error has no narrower Python type)
            raise EmbeddingFilesError(f"{self.path}: not a tokenizer file ({exc.__class__.__name__})") from None
        self._vocab = {piece: i for piece, i in self._tok.get_vocab().items()}
        self.size = self._tok.get_vocab_size()

    def ids(self, token: str) -> list[int]:
        """Piece ids of one stage token: ``"▁" + token`` when the vocabulary has it, else its encoding."""
        one = self._vocab.get("\u2581" + token)
        if one is not None:
            return [one]
        return self._tok.encode(token, add_special_tokens=False).ids


def load_matrix(sha256: str | None = None, directory: Path | None = None):
    """The 32,000 x 256 float16 embedding matrix (training only) and its file's SHA-256."""
    try:
        from safetensors.numpy import load
    except ImportError:
        raise EmbeddingFilesError(f"the safetensors package is not installed ({INSTALL})") from None
    directory = wordllama_dir() if directory is None else directory
    path = directory / WEIGHTS_FILE
    blob = _checked(path, sha256)
    return load(blob)["embedding.weight"], hashlib.sha256(blob).hexdigest()
