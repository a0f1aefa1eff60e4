"""ModelConfig: the one description of a decoder that every format translates into."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from diffeval.errors import ConfigError, shown
from diffeval.families import DIFFERENTIAL, FAMILIES, GATES, LAYER_TYPES, SOFTMAX

ROPE_TYPES = ("default", "linear", "llama3", "yarn")
# Fields written only when they differ from their defaults (records of models without them stay as they were)
ROPE_EXTRA_FIELDS = ("fraction", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor", "truncate")
VARIANT_FIELDS = ("qk_norm", "gate", "sliding_window", "layer_types")
MAX_DIM = 1 << 24  # any one size (layers, width, vocabulary, positions): far above real models


def _without_defaults(obj: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """asdict(obj) without the fields `names` where they hold their dataclass default."""
    out = dataclasses.asdict(obj)
    defaults = {f.name: f.default for f in dataclasses.fields(obj)}
    for name in names:
        if out[name] == defaults[name]:
            del out[name]
    return out


def _finite_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} ({shown(value)}) must be a finite number")


@dataclass(frozen=True)
class RopeConfig:
    """Rotary position embedding: base, scaling, and how much of each head it rotates.

    Scaling types: `linear` (every frequency / factor), `llama3` (Llama 3.1: long wavelengths /
    factor, short kept, a smooth band between; low_freq_factor, high_freq_factor) and `yarn`
    (YaRN: frequencies that turn fewer than beta_slow times over the original context are
    interpolated (/ factor), those that turn more than beta_fast times kept, a linear ramp over
    the pair index between (its ends floored / ceiled when `truncate`); cos and sin are multiplied
    by an attention factor: `attention_factor` when given, else 0.1 ln(factor) + 1, or with both
    `mscale` and `mscale_all_dim` the ratio (0.1 mscale ln f + 1) / (0.1 mscale_all_dim ln f + 1)).
    `original_max_position_embeddings` is the pre-training context of llama3 and yarn.

    `fraction` < 1 is partial rotary (GPT-NeoX, Phi, Qwen3.5): the first int(d_head * fraction)
    dims of each head are rotated (rotate_half pairs within them, frequencies over that width),
    the rest pass through."""

    theta: float = 10000.0
    type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    fraction: float = 1.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = None
    truncate: bool = True

    def __post_init__(self) -> None:
        if self.type not in ROPE_TYPES:
            raise ConfigError(
                f"unsupported RoPE scaling type {shown(self.type)}; supported: {', '.join(ROPE_TYPES)}"
            )
        for name in ("theta", "factor", "low_freq_factor", "high_freq_factor", "fraction", "beta_fast", "beta_slow"):
            _finite_number(f"rope.{name}", getattr(self, name))
        for name in ("mscale", "mscale_all_dim", "attention_factor"):
            if getattr(self, name) is not None:
                _finite_number(f"rope.{name}", getattr(self, name))
        if not self.theta > 0:
            raise ConfigError(f"rope.theta ({self.theta}) must be > 0")
        max_pos = self.original_max_position_embeddings
        if isinstance(max_pos, bool) or not isinstance(max_pos, int) or max_pos < 1:
            raise ConfigError(f"rope.original_max_position_embeddings ({shown(max_pos)}) must be a positive integer")
        if self.type != "default" and not self.factor > 0:
            raise ConfigError(f"rope factor ({self.factor}) must be > 0")
        if self.type == "llama3" and not self.high_freq_factor > self.low_freq_factor:
            raise ConfigError(
                f"llama3 rope: high_freq_factor ({self.high_freq_factor}) must exceed "
                f"low_freq_factor ({self.low_freq_factor})"
            )
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"rope.fraction ({self.fraction}) must be in (0, 1]")
        if self.type == "yarn":
            self._check_yarn()

    def _check_yarn(self) -> None:
        if not self.beta_slow > 0 or not self.beta_fast >= self.beta_slow:
            raise ConfigError(f"yarn rope: beta_fast ({self.beta_fast}) and beta_slow ({self.beta_slow}) must be "
                              "> 0, beta_fast >= beta_slow")
        if self.attention_factor is not None and not self.attention_factor > 0:
            raise ConfigError(f"rope.attention_factor ({self.attention_factor}) must be > 0")
        if not isinstance(self.truncate, bool):
            raise ConfigError(f"rope.truncate ({shown(self.truncate)}) must be true or false")

    def rotary_dim(self, d_head: int) -> int:
        """Dims of a d_head-wide head that RoPE rotates: int(d_head * fraction), even and >= 2."""
        rot = int(d_head * self.fraction)
        if rot < 2 or rot % 2:
            raise ConfigError(f"rope.fraction ({self.fraction}) x d_head ({d_head}) = {rot} rotary dims: "
                              "must be an even number >= 2")
        return rot

    def attention_scaling(self) -> float:
        """The factor on cos and sin: 1, except for yarn (see the class docstring)."""
        if self.type != "yarn":
            return 1.0
        if self.attention_factor is not None:
            return float(self.attention_factor)

        def mscale(scale: float, m: float = 1.0) -> float:
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        if self.mscale and self.mscale_all_dim:  # both given and non-zero, as transformers reads them
            return mscale(self.factor, self.mscale) / mscale(self.factor, self.mscale_all_dim)
        return mscale(self.factor)

    def to_dict(self) -> dict[str, Any]:
        """All fields, except those of ROPE_EXTRA_FIELDS at their defaults."""
        return _without_defaults(self, ROPE_EXTRA_FIELDS)


@dataclass(frozen=True)
class ModelConfig:
    """A pre-norm decoder. For `diff`, `n_heads` counts differential heads (each has two
    query/key maps of width `d_head` and one value of width 2 * `d_head`), and `n_kv_heads`
    counts key/value heads of width `d_head` (as Hugging Face DiffLlama stores them), which
    must divide 2 * `n_heads`. For `diff2` (DIFF V2), `n_heads` counts output heads: 2 *
    `n_heads` query heads of width `d_head` (default d_model / n_heads) in one softmax call,
    query heads 2i and 2i + 1 in one GQA group (so 2 * n_heads / n_kv_heads must be even),
    value width `d_head`, and a per-token lambda from `lambda_proj` (bias when `lambda_bias`);
    `n_kv_heads` defaults to `n_heads` there (the key/value heads of the matched Transformer).

    `gated` is softmax attention whose output is multiplied by sigmoid(x W_g) before the output
    projection: one gate per output feature (`gate: element`, g_proj d_model -> H * d_head) or
    one per head (`gate: head`, d_model -> H). `sinks` is softmax attention with a learnable
    logit per head in every row's denominator (`sinks`, shape (H,)). `sliding_window` W limits
    a query to its W most recent keys (itself included) in the layers `layer_types` marks
    "sliding_attention" (all layers when `layer_types` is not given); softmax families only.
    `qk_norm` adds a per-head RMSNorm (weight d_head, eps norm_eps) on queries and keys before
    RoPE (Qwen3), for every family."""

    family: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    n_kv_heads: int | None = None
    d_head: int | None = None
    max_seq_len: int = 2048
    rope: RopeConfig = field(default_factory=RopeConfig)
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    diff_norm_weight: bool = False  # per-head RMSNorm with a weight (unilm `subln`) or without (HF)
    diff_norm_eps: float | None = None  # eps of DIFF's per-head RMSNorm; None: norm_eps
    lambda_bias: bool = False  # diff2: lambda_proj has a bias
    qk_norm: bool = False  # per-head RMSNorm of q and k before RoPE (Qwen3)
    gate: str | None = None  # gated: "element" (default) or "head"
    sliding_window: int | None = None  # softmax families: keys a query sees in its sliding layers
    layer_types: tuple[str, ...] | None = None  # per layer "full_attention" | "sliding_attention"
    lambda_std: float = 0.1  # init only
    init_std: float = 0.02  # init only

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"unknown family {self.family!r}; valid: {', '.join(FAMILIES)}")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} ({shown(value)}) must be a positive integer")
            if value > MAX_DIM:
                raise ConfigError(f"{name} ({value:,}) is beyond any model this tool can build (limit {MAX_DIM:,})")
        for name in ("norm_eps", "lambda_std", "init_std"):
            _finite_number(name, getattr(self, name))
        if isinstance(self.rope, dict):
            try:
                object.__setattr__(self, "rope", RopeConfig(**self.rope))
            except TypeError as exc:
                raise ConfigError(f"rope: {exc}") from None
        if not isinstance(self.rope, RopeConfig):
            raise ConfigError(f"rope ({shown(self.rope)}) must be a mapping like {{theta: 10000.0}}")
        # diff2 by default keeps the key/value heads of a Transformer with n_heads heads
        default_kv = self.n_heads if self.family == "diff2" else self.n_q_heads
        n_kv = self.n_kv_heads if self.n_kv_heads is not None else default_kv
        object.__setattr__(self, "n_kv_heads", n_kv)
        if self.d_head is None:
            # diff2 keeps the head size of a Transformer with n_heads heads; diff halves it
            split = self.n_heads if self.family == "diff2" else self.n_q_heads
            if self.d_model % split:
                raise ConfigError(
                    f"d_model ({self.d_model}) must be divisible by the number of "
                    f"{'output' if self.family == 'diff2' else 'query'} heads ({split}) when d_head is not given"
                )
            object.__setattr__(self, "d_head", self.d_model // split)
        if not isinstance(self.d_head, int) or self.d_head < 2 or self.d_head % 2:
            raise ConfigError(f"d_head ({self.d_head!r}) must be an even integer >= 2 (RoPE pairs)")
        self.rope.rotary_dim(self.d_head)  # partial rotary must leave whole pairs
        if not isinstance(n_kv, int) or n_kv < 1 or self.n_q_heads % n_kv:
            raise ConfigError(
                f"query heads ({self.n_q_heads}) must be divisible by n_kv_heads ({n_kv})"
            )
        if self.family == "sha" and (self.n_heads != 1 or n_kv != 1):
            raise ConfigError(
                f"family 'sha' has one head per layer: n_heads ({self.n_heads}) and "
                f"n_kv_heads ({n_kv}) must be 1"
            )
        if self.family == "diff2" and (self.n_q_heads // n_kv) % 2:
            raise ConfigError(
                f"family 'diff2' pairs query heads 2i and 2i+1 on one key/value head: the GQA group size "
                f"2 * n_heads / n_kv_heads ({self.n_q_heads} / {n_kv} = {self.n_q_heads // n_kv}) must be even"
            )
        if not self.norm_eps > 0:
            raise ConfigError(f"norm_eps ({self.norm_eps}) must be > 0")
        self._check_variants()
        if self.diff_norm_eps is not None and not self.diff_norm_eps > 0:
            raise ConfigError(f"diff_norm_eps ({self.diff_norm_eps}) must be > 0")

    def _check_variants(self) -> None:
        """qk_norm, gate, sliding_window and layer_types."""
        if not isinstance(self.qk_norm, bool):
            raise ConfigError(f"qk_norm ({shown(self.qk_norm)}) must be true or false")
        if self.family == "gated":
            gate = "element" if self.gate is None else self.gate
            if gate not in GATES:
                raise ConfigError(f"gate ({shown(self.gate)}) must be one of {', '.join(GATES)}")
            object.__setattr__(self, "gate", gate)
        elif self.gate is not None:
            raise ConfigError(f"gate ({shown(self.gate)}) is a field of family 'gated', not {self.family!r}")
        window = self.sliding_window
        if window is not None:
            if isinstance(window, bool) or not isinstance(window, int) or window < 1:
                raise ConfigError(f"sliding_window ({shown(window)}) must be a positive integer")
            if self.family not in SOFTMAX:
                raise ConfigError(f"sliding_window is for the softmax families ({', '.join(SOFTMAX)}), "
                                  f"not {self.family!r}")
        types = self.layer_types
        if types is not None:
            if not isinstance(types, (list, tuple)) or len(types) != self.n_layers:
                raise ConfigError(f"layer_types ({shown(types)}) must list one type per layer ({self.n_layers})")
            bad = sorted({str(t) for t in types if t not in LAYER_TYPES})
            if bad:
                raise ConfigError(f"layer_types: unknown type(s) {', '.join(bad)}; valid: {', '.join(LAYER_TYPES)}")
            if window is None and "sliding_attention" in types:
                raise ConfigError("layer_types has sliding_attention layers but sliding_window is not set")
            object.__setattr__(self, "layer_types", tuple(types))

    def window(self, layer_idx: int) -> int | None:
        """The sliding window of a layer (None: full causal attention)."""
        if self.sliding_window is None:
            return None
        if self.layer_types is not None and self.layer_types[layer_idx] != "sliding_attention":
            return None
        return self.sliding_window

    @property
    def n_q_heads(self) -> int:
        """Query projections of width d_head: 2 * n_heads for diff and diff2, n_heads otherwise."""
        return 2 * self.n_heads if self.family in DIFFERENTIAL else self.n_heads

    @property
    def d_value(self) -> int:
        """Width of one attention head's output."""
        return 2 * self.d_head if self.family == "diff" else self.d_head

    def lambda_init(self, layer_idx: int) -> float:
        """DIFF lambda_init for a 0-based layer index."""
        return 0.8 - 0.6 * math.exp(-0.3 * layer_idx)

    def to_dict(self) -> dict[str, Any]:
        """All fields, except the variant fields (VARIANT_FIELDS) where they are off: a config
        without them reads the same, and records of models without them stay as they were."""
        out = _without_defaults(self, VARIANT_FIELDS)
        out["rope"] = self.rope.to_dict()
        if out.get("layer_types") is not None:
            out["layer_types"] = list(out["layer_types"])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"format", "tokenizer"})
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {', '.join(unknown)}")
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
            and f.name not in data
        ]
        if missing:
            raise ConfigError(f"{source}: missing field(s) {', '.join(missing)}")
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("rope"), dict):
            bad = sorted(set(values["rope"]) - {f.name for f in dataclasses.fields(RopeConfig)})
            if bad:
                raise ConfigError(f"{source}: unknown rope field(s) {', '.join(bad)}")
        try:
            return cls(**values)
        except TypeError as exc:  # wrong value types surface here
            raise ConfigError(f"{source}: {exc}") from None
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def n_params(self) -> int:
        """Parameter count, from the shapes alone."""
        d, dh = self.d_model, self.d_head
        attn = d * self.n_q_heads * dh + 2 * d * self.n_kv_heads * dh + self.n_heads * self.d_value * d
        if self.qkv_bias:
            attn += self.n_q_heads * dh + 2 * self.n_kv_heads * dh
        if self.o_bias:
            attn += d
        if self.family == "diff":
            attn += 4 * dh + (2 * dh if self.diff_norm_weight else 0)
        if self.family == "diff2":
            attn += d * self.n_heads + (self.n_heads if self.lambda_bias else 0)
        if self.family == "gated":
            attn += d * self.n_heads * (dh if self.gate == "element" else 1)
        if self.family == "sinks":
            attn += self.n_heads
        if self.qk_norm:
            attn += 2 * dh
        mlp = 3 * d * self.d_ff + (2 * self.d_ff + d if self.mlp_bias else 0)
        per_layer = attn + mlp + 2 * d
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.n_layers * per_layer + d + head
