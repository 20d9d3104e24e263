"""A fast loader for BERT-family sentence encoders (all-MiniLM-L6-v2 and kin) that never imports transformers.

``import transformers`` plus ``AutoModel`` costs several seconds before a single text is encoded
(transformers 5 pulls in torch._dynamo and torch.distributed.tensor through its BERT module). For a
local folder holding a plain BERT (``config.json`` with ``model_type = "bert"``, absolute positions,
exact GELU), ``model.safetensors`` and a ``tokenizer.json``, the same forward pass is assembled
from torch's own :class:`torch.nn.TransformerEncoderLayer` (post-LayerNorm, the layout BERT uses;
fused kernels in inference) with the checkpoint's weights loaded directly, and
the tokenizer is the Rust ``tokenizers`` one the transformers fast tokenizer wraps. Everything
else (other architectures, hub names, LoRA) goes through transformers, see
:mod:`fedrec.text.encoder`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

_LAYER_KEYS = {  # BERT checkpoint name -> torch.nn.TransformerEncoderLayer name ("qkv" are concatenated)
    "attention.output.dense": "self_attn.out_proj",
    "attention.output.LayerNorm": "norm1",
    "intermediate.dense": "linear1",
    "output.dense": "linear2",
    "output.LayerNorm": "norm2",
}


def _read_config(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None


def supports_fast_path(folder: Path) -> bool:
    """Whether ``folder`` holds a plain BERT encoder this module can run without transformers."""
    folder = Path(folder)
    config = _read_config(folder)
    if config is None or not (folder / "model.safetensors").is_file() or not (folder / "tokenizer.json").is_file():
        return False
    return (config.get("model_type") == "bert" and config.get("hidden_act", "gelu") == "gelu"
            and config.get("position_embedding_type", "absolute") == "absolute"
            and not config.get("is_decoder", False) and not config.get("add_cross_attention", False))


def token_limit(folder: Path) -> int:
    """The encoder's token limit from its files: min of 512, sentence-transformers', tokenizer's, positions."""
    folder = Path(folder)
    limits = [512]
    for file, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length"),
                      ("config.json", "max_position_embeddings")):
        try:
            value = json.loads((folder / file).read_text()).get(key)
        except (OSError, ValueError):
            continue
        if isinstance(value, int) and value < 100_000:
            limits.append(value)
    return min(limits)


class BertSentenceModel(nn.Module):
    """BERT embeddings + post-LN transformer layers (torch's own), returning the last hidden state."""

    def __init__(self, config: dict[str, Any], state: dict[str, Tensor]) -> None:
        super().__init__()
        hidden, eps = int(config["hidden_size"]), float(config.get("layer_norm_eps", 1e-12))
        self.word_embeddings = nn.Embedding.from_pretrained(state["word_embeddings.weight"], freeze=True)
        self.position_embeddings = nn.Embedding.from_pretrained(state["position_embeddings.weight"], freeze=True)
        self.token_type_embeddings = nn.Embedding.from_pretrained(state["token_type_embeddings.weight"], freeze=True)
        self.embedding_norm = nn.LayerNorm(hidden, eps=eps)
        # built on the meta device (no random init), then given the checkpoint's tensors
        with torch.device("meta"):
            layer = nn.TransformerEncoderLayer(hidden, int(config["num_attention_heads"]),
                                               int(config["intermediate_size"]), dropout=0.0, activation="gelu",
                                               layer_norm_eps=eps, batch_first=True, norm_first=False)
            # no nested tensors: measured slower with 2 threads on a busy machine; batches of similar
            # token counts leave little padding anyway
            self.encoder = nn.TransformerEncoder(layer, int(config["num_hidden_layers"]), enable_nested_tensor=False)
        self.hidden_size = hidden

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """Last hidden state (B, T, H) (padded positions hold values to be masked out)."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        hidden = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings(types)
        return self.encoder(self.embedding_norm(hidden), src_key_padding_mask=attention_mask == 0)


def _bert_state(checkpoint: dict[str, Tensor], layers: int) -> dict[str, Tensor] | None:
    """The checkpoint's weights renamed for :class:`BertSentenceModel`, or None when some are missing."""
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in checkpoint else ""
    ours: dict[str, Tensor] = {}
    try:
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            ours[f"{name}.weight"] = checkpoint[f"{prefix}embeddings.{name}.weight"]
        for part in ("weight", "bias"):
            ours[f"embedding_norm.{part}"] = checkpoint[f"{prefix}embeddings.LayerNorm.{part}"]
        for k in range(layers):
            source, target = f"{prefix}encoder.layer.{k}.", f"encoder.layers.{k}."
            for part in ("weight", "bias"):
                ours[f"{target}self_attn.in_proj_{part}"] = torch.cat(
                    [checkpoint[f"{source}attention.self.{name}.{part}"] for name in ("query", "key", "value")])
                for theirs, mine in _LAYER_KEYS.items():
                    ours[f"{target}{mine}.{part}"] = checkpoint[f"{source}{theirs}.{part}"]
    except KeyError:
        return None
    return {name: tensor.float() for name, tensor in ours.items()}


def load_bert(folder: Path) -> BertSentenceModel | None:
    """The BERT encoder in ``folder`` in eval mode, or None when its weights do not fit the layout."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config = _read_config(folder)
    if config is None:
        return None
    try:
        checkpoint = load_file(str(folder / "model.safetensors"))
    except Exception:  # noqa: BLE001 - an unreadable file is left to transformers, which says what is wrong
        return None
    try:
        state = _bert_state(checkpoint, int(config["num_hidden_layers"]))
        if state is None:
            return None
        model = BertSentenceModel(config, state)
        model.load_state_dict(state, strict=True, assign=True)
    except (RuntimeError, KeyError, ValueError):  # shapes or names that do not fit
        return None
    return model.eval()


def load_tokenizer(folder: Path) -> Any:
    """The Rust tokenizer of ``tokenizer.json``, without the padding/truncation the file may preset."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def encode_tokens(tokenizer: Any, texts: list[str], max_length: int) -> list[Any]:
    """The tokenizer's encodings of ``texts``, cut to ``max_length`` tokens (a cut one has ``overflowing``)."""
    tokenizer.enable_truncation(max_length)
    try:
        return tokenizer.encode_batch(texts)
    finally:
        tokenizer.no_truncation()


def pad_batch(encodings: list[Any]) -> tuple[Tensor, Tensor, Tensor]:
    """(input_ids, attention_mask, token_type_ids) of some encodings, padded (id 0) to the longest."""
    width = max(len(e.ids) for e in encodings)
    ids = torch.zeros(len(encodings), width, dtype=torch.int64)
    mask = torch.zeros(len(encodings), width, dtype=torch.int64)
    types = torch.zeros(len(encodings), width, dtype=torch.int64)
    for row, encoding in enumerate(encodings):
        n = len(encoding.ids)
        ids[row, :n] = torch.tensor(encoding.ids)
        mask[row, :n] = 1
        types[row, :n] = torch.tensor(encoding.type_ids)
    return ids, mask, types


def token_counts(tokenizer: Any, texts: list[str]) -> list[int]:
    """Tokens of each text before truncation (special tokens included)."""
    return [len(e.ids) for e in tokenizer.encode_batch(texts)]
