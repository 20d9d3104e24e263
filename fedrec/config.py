"""Run configuration: TOML files plus ``--set key=value`` overrides, validated at the edge.

Unknown keys and out-of-range values raise :class:`FedrecError` with a one-line message that names
the key and the fix. The resolved config is written to ``config.json`` next to the run's outputs.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError, model_validator

from fedrec.errors import FedrecError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class DataConfig(Section):
    """Which data, which split, and how users become clients."""

    name: str = "synthetic"
    data_dir: str | None = None  # a folder holding the dataset (or its parent); else $FEDREC_DATA, cache
    download: bool = False  # fetch the official archive into the cache when not found locally
    split: Literal["official", "ratio", "leave_last_out", "leave_one_out"] = "ratio"  # leave_one_out: random, for data without time
    fold: int = Field(default=1, ge=1, le=5)  # official fold uN (ML-100K: 1..5)
    test_ratio: float = Field(default=0.2, gt=0.0, lt=1.0)  # split = "ratio"
    validation_ratio: float = Field(default=0.0, ge=0.0, lt=1.0)  # carved per user from train (leave_last_out
    # always holds out the second-to-last interaction as validation)
    split_seed: int = 0
    # leave_last_out: how equal timestamps are ordered. "row": a later row in the data file counts as later
    # (in ML-100K's u.data that means a higher item id, so the tied test item tends to be the less popular
    # one); "random": a random order drawn from split_seed.
    time_ties: Literal["row", "random"] = "row"
    # leave_last_out: train on the validation interaction too, for the final fit once settings were chosen on
    # validation (the test interaction stays held out; no validation metrics are reported)
    train_on_validation: bool = False
    min_rating: float | None = None  # keep only interactions rated >= this (explicit data used as implicit)
    # clients: one per user (cross-device) or users grouped into silos (cross-silo)
    clients: Literal["per_user", "silos", "dirichlet"] = "per_user"  # dirichlet: silos skewed over item categories
    num_silos: int = Field(default=10, ge=1)
    silo_feature: str | None = None  # group silos by a user feature ("occupation", "zip_region", ...); else random
    dirichlet_alpha: float = Field(default=0.5, gt=0.0)  # clients = "dirichlet": smaller = more skewed silos
    # table files (name = "table")
    path: str | None = None
    user_col: str = "user"
    item_col: str = "item"
    rating_col: str | None = None
    timestamp_col: str | None = None
    duplicates: Literal["error", "last", "sum"] = "error"
    # synthetic data (name = "synthetic")
    num_users: int = Field(default=1000, ge=2)
    num_items: int = Field(default=800, ge=2)
    mean_interactions: float = Field(default=40.0, gt=0)
    synthetic_seed: int = 0


#: smallest DP noise multiplier a run accepts: below it epsilon is in the hundreds (no meaningful privacy) and
#: the PLD accountant's grid grows without bound (z = 0.01 takes 9 s per evaluation; z = 1e-6 asks for 728 TiB)
MIN_NOISE_MULTIPLIER = 0.05
#: the recommenders that read item text through a shared adapter (fedrec/models/text.py)
TEXT_MODELS = ("text_bpr", "text_mf", "tower_bpr", "tower_mf")
#: ModelConfig keys read by the text pipeline and the cold-start protocol, not by the model's own config
TEXT_PIPELINE_KEYS = frozenset({"text_encoder", "text_dim", "text_max_length", "text_batch_size", "text_cache",
                                "text_columns", "cold_start_items"})


#: why virtual fake rows and local clipping do not mix (fedrec/privacy/hiding.py builds fakes from one unclipped step)
VIRTUAL_FAKES_UNCLIPPED = ("pseudo-item hiding with virtual fake values builds fake rows from one unclipped SGD step, so "
                           "with train.local_clip_norm the clipped real rows stand out; use bootstrap fake values "
                           "(privacy.pseudo_values = 'bootstrap'; fedrec audit: --pseudo-values bootstrap) or remove "
                           "train.local_clip_norm")


class ModelConfig(Section):
    """Model name and its hyperparameters; unset ones take the model's defaults (fedrec/models/)."""

    name: Literal["mf", "bpr", "ncf", "text_bpr", "text_mf", "tower_bpr", "tower_mf", "sasrec",
                  "lora_bpr"] = "mf"  # lora_bpr: text tower + federated LoRA in the encoder ([lora], fedrec/text/lora.py)
    dim: int | None = Field(default=None, ge=1, le=4096)
    l2: float | None = Field(default=None, ge=0.0)
    init_std: float | None = Field(default=None, gt=0.0)
    negatives: int | None = Field(default=None, ge=1, le=1000)  # bpr, ncf: sampled negatives per example
    loss: Literal["bpr", "softmax"] | None = None  # bpr, text_bpr, tower_bpr: BPR (default) or sampled softmax
    variant: Literal["gmf", "mlp", "neumf"] | None = None  # ncf
    layers: list[int] | None = None  # ncf: MLP layer sizes
    private_head: bool | None = None  # ncf: PFedRec-style private output layer
    # sequence model (sasrec), fedrec/models/sequence.py
    max_history: int | None = Field(default=None, ge=1, le=1000)  # items the model looks back (L)
    blocks: int | None = Field(default=None, ge=1, le=16)  # self-attention blocks
    heads: int | None = Field(default=None, ge=1, le=64)  # attention heads (dim must be a multiple)
    dropout: float | None = Field(default=None, ge=0.0, lt=1.0)
    item_init: Literal["random", "text"] | None = None  # "text": item embeddings start from model.text_encoder
    # text models (text_bpr, text_mf: ID + text; tower_bpr, tower_mf: text only), fedrec/models/text.py
    text_adapter: Literal["linear", "mlp"] | None = None  # the shared adapter from text embedding to item vector
    adapter_hidden: int | None = Field(default=None, ge=1, le=4096)  # mlp adapter: hidden units
    text_encoder: str = "all-MiniLM-L6-v2"  # sentence encoder: the packaged default, a HF model name or a local folder
    text_dim: int = Field(default=64, ge=0)  # PCA of the text embeddings to this many dims (0: keep all)
    text_max_length: int | None = Field(default=None, ge=2, le=8192)  # tokens per text (default: the encoder's limit)
    text_batch_size: int = Field(default=64, ge=1)  # texts per encoder batch
    text_cache: bool = True  # cache embeddings on disk ($FEDREC_CACHE or ~/.cache/fedrec, embeddings/)
    text_columns: list[str] | None = None  # data.name=table: the item text comes from these columns
    # cold-start protocol: this fraction of items is held out of training entirely and ranked at test
    cold_start_items: float = Field(default=0.0, ge=0.0, lt=1.0)

    def options(self) -> dict[str, Any]:
        """The settings given explicitly, as the model's config dataclass takes them."""
        options = {k: v for k, v in self.model_dump(exclude={"name", *TEXT_PIPELINE_KEYS}).items() if v is not None}
        if "layers" in options:
            options["layers"] = tuple(options["layers"])
        return options


class EvalConfig(Section):
    """Evaluation: rating error for rating models, top-K ranking for implicit-feedback models."""

    ks: list[int] = Field(default_factory=lambda: [10, 20])
    sampled_negatives: int = Field(default=99, ge=0)  # sampled ranking (1 + N candidates); 0 turns it off
    seed: int = 0
    finetune_epochs: int = Field(default=0, ge=0)  # > 0: also report each client fine-tuned locally (finetuned_*)
    mix_beta: float = Field(default=1.0, ge=0.0, le=1.0)  # fine-tuned copy: theta_g + beta (theta_i - theta_g)


class TrainConfig(Section):
    """Federated (or centralised) training."""

    mode: Literal["federated", "centralized"] = "federated"
    rounds: int = Field(default=30, ge=1)  # federated rounds, or epochs in centralised mode
    seed: int = 0
    backend: Literal["vectorized", "reference"] = "vectorized"
    local_epochs: int = Field(default=1, ge=1)
    local_lr: float = Field(default=0.05, gt=0.0)
    private_lr: float | None = Field(default=None, gt=0.0)  # local lr of the private rows; default local_lr
    batch_size: int = Field(default=32, ge=1)
    client_fraction: float = Field(default=1.0, gt=0.0, le=1.0)
    row_weighting: Literal["row_count", "client_size", "fedavg"] = "row_count"
    client_weighting: Literal["examples", "uniform", "sqrt"] = "examples"  # a client's weight: n, 1 or sqrt(n)
    prox_mu: float = Field(default=0.0, ge=0.0)  # FedProx: local loss + mu/2 ||w - w_global||^2 on shared parameters
    # every local SGD step (training and eval.finetune_epochs) scales the client's gradient to L2 norm <= this; None: off
    local_clip_norm: float | None = Field(default=None, gt=0.0)
    # after the last round every client refits its private rows (user vector, bias) to the final shared model for
    # this many local epochs at refit_private_lr (default: private_lr, else local_lr), shared parts frozen,
    # nothing uploaded; 0: off
    refit_private_epochs: int = Field(default=0, ge=0)
    refit_private_lr: float | None = Field(default=None, gt=0.0)
    # recency: each user's recency_window latest training interactions appear 1 + recency_repeats times in every
    # local epoch (centralised: every epoch), on the client's own data (fedrec/data/recency.py); 0: off
    recency_repeats: int = Field(default=0, ge=0, le=100)
    recency_window: int = Field(default=5, ge=1)
    # stragglers and dropouts (fedrec/federated/participation.py); all off by default
    client_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)  # probability a sampled client drops out before uploading
    speed_sigma: float = Field(default=0.0, ge=0.0)  # clients' compute speeds ~ log-normal(0, sigma), drawn once
    seconds_per_example: float = Field(default=0.01, gt=0.0)  # median simulated compute time per example and epoch
    deadline_quantile: float | None = Field(default=None, gt=0.0, le=1.0)  # round deadline: this quantile of the cohort's times
    deadline_seconds: float | None = Field(default=None, gt=0.0)  # ... or a fixed deadline in simulated seconds
    late_updates: Literal["drop", "downweight"] = "drop"  # downweight: weight deadline / compute time
    server_optimizer: Literal["sgd", "adam", "yogi", "adagrad"] = "sgd"
    server_lr: float = Field(default=1.0, gt=0.0)
    server_momentum: float = Field(default=0.0, ge=0.0, lt=1.0)
    server_beta1: float = Field(default=0.9, ge=0.0, lt=1.0)
    server_beta2: float = Field(default=0.99, ge=0.0, lt=1.0)
    server_tau: float = Field(default=1e-3, gt=0.0)
    server_lazy_rows: bool = False  # adaptive server optimisers: rows no client updated keep value and state
    # named shared tensors with their own server step, e.g. {adapter_w = 0.01, adapter_b = 0.01}; the others: server_lr
    server_lr_by_tensor: dict[str, PositiveFloat] = Field(default_factory=dict)
    # centralised mode
    central_optimizer: Literal["adam", "sgd"] = "adam"
    central_lr: float = Field(default=1e-3, gt=0.0)
    central_batch_size: int = Field(default=256, ge=1)
    # bookkeeping
    eval_every: int = Field(default=1, ge=1)
    checkpoint_every: int = Field(default=1, ge=1)

    @property
    def refit_lr(self) -> float:
        """Learning rate of the final refit of the private rows: refit_private_lr, else private_lr, else local_lr."""
        return self.refit_private_lr or self.private_lr or self.local_lr


class PrivacyConfig(Section):
    """Differential privacy of the clients' uploads (fedrec/privacy/). Off unless epsilon or noise_multiplier is set.

    ``central``: DP-FedAvg with client-level (epsilon, delta) over the whole run; give ``epsilon`` (noise
    calibrated to train.rounds and the sampling rate train.client_fraction) or ``noise_multiplier``.
    ``local``: every upload is clipped and noised on the client; ``epsilon`` is per client per round.
    """

    mode: Literal["central", "local", "off"] = "central"  # "off" ignores the other settings
    epsilon: float | None = Field(default=None, gt=0.0)  # central: total budget; local: per round
    delta: float | None = Field(default=None, gt=0.0, lt=1.0)
    # central: z instead of a target epsilon; below MIN_NOISE_MULTIPLIER it protects nothing and cannot be accounted
    noise_multiplier: float | None = Field(default=None, ge=MIN_NOISE_MULTIPLIER)
    clip_norm: float = Field(default=1.0, gt=0.0)  # L2 bound of a client's whole upload (initial value if adaptive)
    adaptive_clip: bool = False  # central: clip norm tracks a quantile of update norms (Andrew et al. 2021)
    target_quantile: float = Field(default=0.5, gt=0.0, lt=1.0)
    clip_lr: float = Field(default=0.2, gt=0.0)  # geometric step size of the adaptive clip norm
    clip_count_stddev: float | None = Field(default=None, gt=0.0)  # noise of the clipped count; default (q N) / 20
    sampling: Literal["poisson"] = "poisson"  # central: client sampling the accountant assumes
    # item hiding and secure aggregation (fedrec/privacy/hiding.py, upload.py); independent of mode/epsilon
    hiding: Literal["none", "dense", "pseudo"] = "none"  # dense: every shared row; pseudo: fake rows for extra items
    pseudo_items: int = Field(default=0, ge=0)  # hiding = "pseudo": fake rows per client ...
    pseudo_ratio: float = Field(default=0.0, ge=0.0)  # ... or this multiple of the client's real rows (pseudo_items = 0)
    pseudo_per_round: bool = False  # new pseudo-items every round (default: one fixed set per client)
    pseudo_values: Literal["virtual", "bootstrap"] = "virtual"  # fake values: SGD step on a virtual rating, or bootstrap
    secure_aggregation: bool = False  # the server learns only the cohort's sum (Bonawitz et al. / SecAgg+, real protocol)
    secagg_threshold: float = Field(default=0.5, gt=0.0, le=1.0)  # Shamir threshold t as a fraction of each client's neighbours
    secagg_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)  # simulated: fraction of a cohort dropping before its masked input
    secagg_max_abs: float = Field(default=1e5, gt=0.0)  # fixed point: largest |value| a client may encode (24 fraction bits)

    @property
    def enabled(self) -> bool:
        return self.mode != "off" and (self.epsilon is not None or self.noise_multiplier is not None)

    def options(self) -> dict[str, Any]:
        """The settings given explicitly."""
        return {k: v for k, v in self.model_dump().items() if v is not None}

    def check(self) -> None:
        """Refuse incomplete or contradictory settings (one-line messages)."""
        if self.hiding == "pseudo" and self.pseudo_items == 0 and self.pseudo_ratio == 0:
            raise ValueError("privacy.hiding = 'pseudo' needs privacy.pseudo_items (e.g. 300) or privacy.pseudo_ratio (e.g. 1.0)")
        if self.hiding != "pseudo" and (self.pseudo_items or self.pseudo_ratio):
            raise ValueError("privacy.pseudo_items / pseudo_ratio need privacy.hiding = 'pseudo'")
        if self.mode == "off":  # the same config without privacy (e.g. the epsilon = infinity baseline)
            return
        given = self.epsilon is not None or self.noise_multiplier is not None
        if self.epsilon is not None and self.noise_multiplier is not None:
            raise ValueError("set either privacy.epsilon (noise is calibrated) or privacy.noise_multiplier, not both")
        if given and self.delta is None:
            raise ValueError("privacy.epsilon needs privacy.delta (e.g. --set privacy.delta=1e-4)"
                             if self.epsilon is not None else "privacy.noise_multiplier needs privacy.delta to report epsilon")
        if self.mode == "local" and self.noise_multiplier is not None:
            raise ValueError("privacy.mode = 'local' takes privacy.epsilon (per round), not privacy.noise_multiplier")
        if self.mode == "local" and self.adaptive_clip:
            raise ValueError("privacy.adaptive_clip works only with privacy.mode = 'central'")


class DefenceConfig(Section):
    """Defences against poisoned uploads (fedrec/federated/robust.py): validate each client's upload, then
    aggregate item rows robustly over the clients that sent them. Off unless ``check_uploads`` or ``aggregator`` is set.
    They need the server to see individual uploads: not available with DP (which aggregates a clipped sum)."""

    check_uploads: bool = False  # reject (and count) uploads with NaN/Inf, bad shapes, bad indices or outsized norms
    max_norm_ratio: float | None = Field(default=10.0, gt=1.0)  # reject norms > ratio x the cohort's median norm
    max_norm: float | None = Field(default=None, gt=0.0)  # reject norms above this absolute bound
    # "sqrt_size": max_norm_ratio compares norm / sqrt(client size), so heavy honest users are not rejected
    norm_scaling: Literal["none", "sqrt_size"] = "none"
    aggregator: Literal["mean", "median", "trimmed_mean", "krum", "multi_krum", "norm_bound"] | None = None
    trim_fraction: float = Field(default=0.1, ge=0.0, lt=0.5)  # trimmed_mean: fraction cut at each end
    byzantine_fraction: float = Field(default=0.2, ge=0.0, lt=0.5)  # krum: assumed attackers among a row's senders
    clip_norm: float | None = Field(default=None, gt=0.0)  # bound on each client's row delta (norm_bound needs it)
    dense_clip_norm: float | None = Field(default=None, gt=0.0)  # the same for each client's dense delta

    @property
    def enabled(self) -> bool:
        return self.check_uploads or self.aggregator is not None

    def check(self) -> None:
        if self.aggregator == "norm_bound" and self.clip_norm is None:
            raise ValueError("defence.aggregator = 'norm_bound' needs defence.clip_norm (e.g. --set defence.clip_norm=1.0)")


class LoraConfig(Section):
    """model.name = "lora_bpr": LoRA adapters (peft) in the text encoder, trained federated (fedrec/text/lora.py)."""

    r: int = Field(default=8, ge=1, le=256)  # adapter rank
    alpha: float = Field(default=16.0, gt=0.0)  # LoRA scaling alpha / r
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)  # LoRA dropout
    target_modules: list[str] = Field(default_factory=lambda: ["query", "value"])  # the encoder's linear layers to adapt
    top_layers: int = Field(default=2, ge=0)  # adapters in the top k layers (frozen ones below cached); 0: every layer
    local_steps: int = Field(default=4, ge=1)  # minibatch steps (train.batch_size interactions) per client per round
    adapter_lr: float = Field(default=1e-3, gt=0.0)  # local Adam on the adapters (head: train.local_lr)
    refit_steps: int = Field(default=20, ge=0)  # clients refit their user vector to the global item tower (Adam
    refit_lr: float = Field(default=0.1, gt=0.0)  # steps) before they train and before evaluation; 0: never
    compare_frozen: bool = True  # also train the same model with the encoder frozen (frozen_* metrics)


class AttackConfig(Section):
    """A simulated poisoning attack (fedrec/federated/attacks.py) and the target items whose exposure (er@5, er@10) is
    reported. Targets without a method measure the same exposure in a clean run, for comparison."""

    method: Literal["none", "random", "bandwagon", "fedrec_attack", "pip_attack"] = "none"
    malicious_fraction: float = Field(default=0.01, gt=0.0, le=1.0)  # malicious clients per benign client
    num_targets: int = Field(default=0, ge=0)  # targets drawn by target_seed among the less popular half of the items
    target_items: list[str] | None = None  # ... or these raw item ids
    target_seed: int = 0
    filler_items: int = Field(default=30, ge=0)  # fillers per fake profile (random: any item; else popular items)
    popular_items: int = Field(default=50, ge=1)  # the attacker's "popular" set: top items of its public sample
    public_fraction: float = Field(default=0.02, gt=0.0, le=1.0)  # benign interactions the attacker knows
    norm_multiplier: float = Field(default=1.0, gt=0.0)  # upload norm <= this x the client's own honest update norm
    norm_bound: float | None = Field(default=None, gt=0.0)  # ... or this absolute L2 bound
    top_k: int = Field(default=10, ge=1)  # fedrec_attack: the rank the targets should reach
    user_steps: int = Field(default=30, ge=1)  # fedrec_attack: steps fitting user vectors to the public sample
    promotion_weight: float = Field(default=1.0, ge=0.0)  # pip_attack: weight of the ranking-promotion term
    seed: int = 0  # the attacker's own draws (public sample, fake profiles)

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def check(self) -> None:
        if self.enabled and self.num_targets == 0 and not self.target_items:
            raise ValueError(f"attack.method = {self.method!r} needs target items: set attack.num_targets (e.g. 5) "
                             "or attack.target_items")


class CompressionConfig(Section):
    """Compressed uploads (fedrec/federated/compression.py), off unless ``topk`` or ``bits`` is set. Top-k keeps
    that fraction of each client's upload coordinates (largest magnitude first); ``bits = 8`` sends int8 values with
    float32 scales; both together: top-k, then 8-bit. Error feedback keeps what a client did not send for its next upload."""

    topk: float | None = Field(default=None, gt=0.0, le=1.0)  # fraction of each upload's coordinates sent
    bits: Literal[8] | None = None  # 8: int8 quantisation
    error_feedback: bool = True  # clients add their unsent residual to the next upload (EF-SGD)
    rounding: Literal["stochastic", "deterministic"] = "stochastic"  # stochastic: unbiased
    scale: Literal["row", "tensor"] = "row"  # one int8 scale per uploaded row (and table), or per client and table

    @property
    def enabled(self) -> bool:
        return self.topk is not None or self.bits is not None


class RunConfig(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    defence: DefenceConfig = Field(default_factory=DefenceConfig)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    compression: CompressionConfig = Field(default_factory=CompressionConfig)

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if self.data.name == "table" and not self.data.path:
            raise ValueError("data.path is required when data.name = 'table'")
        if self.data.time_ties != "row" and self.data.split != "leave_last_out":
            raise ValueError("data.time_ties orders equal timestamps in data.split = 'leave_last_out'; set that split "
                             "or remove data.time_ties")
        if self.data.train_on_validation and self.data.split != "leave_last_out":
            raise ValueError("data.train_on_validation adds the held-out validation interaction of data.split = "
                             "'leave_last_out' to training; set that split or remove data.train_on_validation")
        if self.train.recency_repeats and self.model.name == "sasrec":
            raise ValueError(f"train.recency_repeats repeats each user's latest training interactions, which "
                             f"model.name={self.model.name!r} does not train on one by one; remove train.recency_repeats")
        self.privacy.check()
        self.defence.check()
        self.attack.check()
        if self.attack.enabled and self.train.mode != "federated":
            raise ValueError("attack.* simulates malicious clients in federated training only (train.mode = 'federated')")
        if self.train.deadline_quantile is not None and self.train.deadline_seconds is not None:
            raise ValueError("set either train.deadline_quantile or train.deadline_seconds, not both")
        if ((self.train.speed_sigma > 0 or self.train.late_updates != "drop")
                and self.train.deadline_quantile is None and self.train.deadline_seconds is None):
            raise ValueError("train.speed_sigma and train.late_updates act at a round deadline; set "
                             "train.deadline_quantile (e.g. 0.9) or train.deadline_seconds")
        if self.privacy.enabled and (self.train.client_weighting != "examples" or self.train.late_updates != "drop"):
            raise ValueError("with privacy.* every client's clipped update counts once, so train.client_weighting and "
                             "train.late_updates = 'downweight' have no effect; leave them at their defaults")
        if self.train.local_clip_norm is not None and self.train.mode != "federated":
            raise ValueError("train.local_clip_norm bounds the clients' local SGD steps; centralised training has none "
                             "(set train.mode = 'federated' or remove train.local_clip_norm)")
        if (self.train.local_clip_norm is not None and self.privacy.hiding == "pseudo"
                and self.privacy.pseudo_values == "virtual"):
            raise ValueError(VIRTUAL_FAKES_UNCLIPPED)
        if self.train.server_lr_by_tensor and self.train.mode != "federated":
            raise ValueError("train.server_lr_by_tensor sets server steps of federated training; centralised training has "
                             "none (set train.mode = 'federated' or remove train.server_lr_by_tensor)")
        if self.train.refit_private_epochs and self.train.mode != "federated":
            raise ValueError("train.refit_private_epochs refits the clients' private rows after federated training; "
                             "set it to 0 in centralised mode (every parameter is trained jointly there)")
        if self.eval.mix_beta != 1.0 and self.eval.finetune_epochs == 0:
            raise ValueError("eval.mix_beta mixes the fine-tuned copies with the global model; "
                             "set eval.finetune_epochs >= 1 (e.g. --set eval.finetune_epochs=1)")
        if self.defence.enabled and self.privacy.enabled:
            raise ValueError("defence.* and privacy.* cannot be combined: DP aggregates a clipped, noised sum, so the server "
                             "never sees the individual uploads the defences inspect (DP's clipping already bounds each client)")
        if self.defence.enabled and self.train.mode != "federated":
            raise ValueError("defence.* applies to federated training only (train.mode = 'federated')")
        if self.privacy.enabled and self.train.mode != "federated":
            raise ValueError("privacy (client-level DP) needs train.mode = 'federated'")
        if self.privacy.hiding != "none" and self.model.name in TEXT_MODELS:
            raise ValueError(f"privacy.hiding hides which item rows a client uploads, but {self.model.name}'s shared text "
                             "adapter update is computed from the public text of the client's items and would still "
                             "reveal them; with text models use DP (privacy.epsilon) or privacy.secure_aggregation")
        if (self.privacy.secure_aggregation or self.privacy.hiding != "none") and self.train.mode != "federated":
            raise ValueError("privacy.secure_aggregation / privacy.hiding need train.mode = 'federated'")
        if self.defence.enabled and (self.privacy.secure_aggregation or self.privacy.hiding == "pseudo"):
            raise ValueError("defence.* cannot be combined with privacy.secure_aggregation or privacy.hiding = 'pseudo': "
                             "the defences inspect each client's upload, the server then receives only the cohort's sum")
        if self.compression.enabled and self.train.mode != "federated":
            raise ValueError("compression.* compresses federated uploads; it needs train.mode = 'federated'")
        if self.compression.enabled and (self.privacy.enabled or self.privacy.secure_aggregation
                                         or self.privacy.hiding != "none"):
            raise ValueError("compression.* cannot be combined with privacy.* yet (DP noise, secure aggregation and "
                             "item hiding act on the uncompressed upload); switch one of them off")
        return self


def _section_keys(section: type[BaseModel]) -> list[str]:
    return list(section.model_fields)


def _check_keys(raw: dict[str, Any]) -> None:
    sections = RunConfig.model_fields
    for key, value in raw.items():
        if key not in sections:
            hint = difflib.get_close_matches(key, sections, n=1)
            raise FedrecError(f"unknown config section [{key}]" + (f"; did you mean [{hint[0]}]?" if hint else f"; sections are {', '.join(sections)}"))
        if not isinstance(value, dict):
            raise FedrecError(f"config [{key}] must be a table of settings, got {value!r}")
        fields = _section_keys(sections[key].annotation)  # type: ignore[arg-type]
        for sub in value:
            if sub not in fields:
                hint = difflib.get_close_matches(sub, fields, n=1)
                fix = f"did you mean {key}.{hint[0]}?" if hint else f"valid keys: {', '.join(fields)}"
                raise FedrecError(f"unknown config key '{key}.{sub}'; {fix}")


def parse_override(assignment: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value), the value read as a TOML literal (else a string)."""
    if "=" not in assignment:
        raise FedrecError(f"--set expects key=value (e.g. train.rounds=10), got '{assignment}'")
    key, text = assignment.split("=", 1)
    path = key.strip().split(".")
    if len(path) != 2 or not all(path):
        raise FedrecError(f"--set key must look like section.key (e.g. train.rounds), got '{key}'")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    return path, value


def _as_text_if_string_field(section: str, key: str, value: Any, assignment: str) -> Any:
    """``--set data.user_col=0`` means the string "0" when the field holds text."""
    model = RunConfig.model_fields.get(section)
    field = model.annotation.model_fields.get(key) if model is not None and hasattr(model.annotation, "model_fields") else None
    if field is not None and field.annotation in (str, str | None) and not isinstance(value, str):
        return assignment.split("=", 1)[1].strip()
    return value


def _format_validation_error(error: ValidationError) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"])
    given = first.get("input")
    message = first["msg"].rstrip(".")
    if first["type"] == "value_error" and not location:  # a cross-field check: its message names keys and fix
        return str(first.get("ctx", {}).get("error", message))
    return f"invalid config value {location}={given!r}: {message}" if location else f"invalid config: {message}"


def load_config(path: Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML config (or defaults), apply overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise FedrecError(f"config file {path} not found; pass a TOML file such as configs/default.toml")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise FedrecError(f"config file {path} is not valid TOML ({error}); fix the syntax") from None
    for assignment in overrides or []:
        (section, key), value = parse_override(assignment)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise FedrecError(f"config [{section}] must be a table of settings")
        raw[section][key] = _as_text_if_string_field(section, key, value, assignment)
    _check_keys(raw)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as error:
        raise FedrecError(_format_validation_error(error)) from None


def config_to_json(config: RunConfig) -> str:
    return json.dumps(config.model_dump(mode="json"), indent=2, sort_keys=True)
