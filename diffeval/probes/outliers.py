"""`outliers`: activation outliers (the DIFF paper's Table 5) and the metric under
attention-logit quantization (its Figure 8). Samples are the text's sequences (one statistics
pass that also gives the unquantized NLL, then one NLL pass per quantized bit width) and, for
`metric: needle`, needle prompts once per bit width. The statistics stream across sequences
in the probe's state (probes/activations.py), saved with the resume cache after each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from diffeval.errors import ConfigError
from diffeval.probes import retrieval as R
from diffeval.probes import streams as act
from diffeval.probes import table5 as T
from diffeval.probes.base import Figure, Probe, ProbeState, Table, by_model, metric
from diffeval.probes.config import ModelDefault, ProbeConfig, option
from diffeval.probes.scoring import answer_text, string_match_all
from diffeval.requests import Hook, Stats, TokenNLL, ids_sha256
from diffeval.specs import check_int, parse_bits, parse_length, parse_tokens
from diffeval.stats import mean_ci, wilson
from diffeval.textdata import describe_files, text_files

NAME = "outliers"
VERSION = 3  # 3: BOS by the tokenizer's rule, NLL over (N, V) rows (2: runs on the probe pipeline)
METRICS = ("nll", "needle")


def _bits(value) -> tuple[int, ...]:
    return parse_bits(value, act.MIN_BITS, act.BASELINE_BITS)


@dataclass(frozen=True)
class OutliersConfig(ProbeConfig):
    """The outliers task: which text and how much (`n_tokens` None = all of it, in sequences
    of `seq_len`), which bit widths, and which metric under quantization."""

    PROBE = NAME
    data: str = option("synthetic", help="synthetic (generated essay prose), or a .txt file / folder of them.")
    n_tokens: Optional[int] = option(32768, flag="--tokens", parse=parse_tokens, shown="32k",
                                     help="Tokens of text to stream through each model (k = 1024), or all.")
    seq_len: int = option(2048, flag="--len", parse=lambda v: parse_length(v, "seq_len"), aliases=("lengths",),
                          model_default=ModelDefault(cap=2048),
                          help="Sequence length in tokens, BOS included (also the needle prompt length). Default: "
                               "2k, or the longest that fits every model's position limit.")
    bits: tuple[int, ...] = option((16, 8, 6, 4), flag="--quant-bits", parse=_bits,
                                   help="Attention-logit bit widths; 16 = unquantized; none to skip.")
    metric: str = option("nll", help="nll (mean token NLL over the text) or needle (accuracy).")
    needle_samples: int = option(4, flag="--samples", help="Needle metric: samples per depth.")
    depths: tuple[float, ...] = R.depths_option()
    seed: int = R.seed_option()

    def __post_init__(self) -> None:
        if self.n_tokens is not None:
            check_int("n_tokens", self.n_tokens, 1)
        check_int("seq_len", self.seq_len, 2)
        object.__setattr__(self, "bits", tuple(self.bits))
        for k in self.bits:
            check_int("bits", k, act.MIN_BITS)
            if k > act.BASELINE_BITS:
                raise ConfigError(f"{k} must be at most {act.BASELINE_BITS}", "bits")
        if len(set(self.bits)) != len(self.bits):
            raise ConfigError(f"{list(self.bits)} repeat a value", "bits")
        if self.metric not in METRICS:
            raise ConfigError(f"{self.metric!r}: choose {' or '.join(METRICS)}", "metric")
        if not isinstance(self.data, str) or not self.data.strip():
            raise ConfigError(f"{self.data!r} must be 'synthetic' or a path", "data")
        if self.n_tokens is None and self.data == "synthetic":
            raise ConfigError("'all' needs a data path: synthetic text never ends", "n_tokens")
        check_int("needle_samples", self.needle_samples, 1)
        object.__setattr__(self, "depths", tuple(float(d) for d in self.depths))
        check_int("seed", self.seed, 0)

    def extra(self) -> dict:
        return {"ranks": list(act.RANKS),
                "quantization": {"scheme": "absmax", "symmetric": True, "rounding": "nearest (ties to even)",
                                 "levels": "2^(bits-1) - 1 per sign", "granularity": "per (batch, head, query row)",
                                 "over": "causally valid logits", "baseline_bits": act.BASELINE_BITS}}

    def grid(self) -> R.NeedleGrid:
        return R.NeedleGrid((self.seq_len,), self.depths, samples=self.needle_samples,
                            haystack="essay" if self.data == "synthetic" else self.data, seed=self.seed)


def _files(cfg: OutliersConfig) -> Optional[list[Path]]:
    return None if cfg.data == "synthetic" else text_files(Path(cfg.data), "data")


def _data(cfg: OutliersConfig) -> dict:
    files = _files(cfg)
    text = ({"kind": "synthetic", "generator": "diffeval essay paragraphs", "seed": cfg.seed} if files is None
            else describe_files(cfg.data, files))
    out = {"text": text}
    if cfg.metric == "needle" and cfg.bits:
        out.update(R.haystack_data(cfg.grid().haystack))
    return out


@dataclass(frozen=True)
class _Sequence:
    index: int
    offset: int
    ids: tuple[int, ...]

    @property
    def id(self) -> str:
        return f"seq{self.index}"


@dataclass(frozen=True)
class _Needle:
    bits: int
    item: R.NeedleSample

    @property
    def id(self) -> str:
        return f"b{self.bits}-{self.item.id}"


def _hook(bits: int) -> Hook:
    from diffeval.probes.activations import quant_hook  # torch: loaded when a run builds its requests

    return Hook(f"absmax-{bits}bit", quant_hook(bits))


def _generate(cfg: OutliersConfig, ctx) -> list:
    tok = ctx.need_tokenizer(NAME)
    ctx.check_length(cfg.seq_len, "sequence")
    seqs = act.text_sequences(cfg.data, _files(cfg), cfg.n_tokens, cfg.seq_len, tok, cfg.seed, ctx.label)
    out: list = [_Sequence(i, off, tuple(ids)) for i, (off, ids) in enumerate(seqs)]
    if cfg.metric == "needle" and cfg.bits:
        items = R.run_samples(cfg.grid(), ctx, NAME)
        out.extend(_Needle(b, it) for b in cfg.bits for it in items)
    return out


def _requests(cfg: OutliersConfig, sample, ctx) -> list:
    if isinstance(sample, _Needle):
        return sample.item.requests(ctx.decode, _hook(sample.bits))[:1]
    if cfg.metric != "nll":
        return [Stats(sample.ids)]
    quantized = [b for b in cfg.bits if b != act.BASELINE_BITS]
    return ([TokenNLL(sample.ids, _hook(act.BASELINE_BITS), stats=True)]
            + [TokenNLL(sample.ids, _hook(b)) for b in quantized])


def _score(cfg: OutliersConfig, sample, outputs: list, ctx) -> dict:
    if isinstance(sample, _Needle):
        s = sample.item
        pred = answer_text(ctx.tokenizer, outputs[0], ctx.decode)
        return {**s.to_record(), "id": sample.id, "kind": "needle", "bits": sample.bits,
                "prediction": [pred], "score": string_match_all(s.expected[:1], pred)}
    row: dict[str, Any] = {"id": sample.id, "kind": "sequence", "index": sample.index, "offset": sample.offset,
                           "n_tokens": [len(sample.ids)], "ids_sha256": ids_sha256(sample.ids),
                           "prediction": [], "score": None}
    if cfg.metric == "nll":
        by_bits = {act.BASELINE_BITS: outputs[0]}
        by_bits.update(zip([b for b in cfg.bits if b != act.BASELINE_BITS], outputs[1:]))
        row["n_targets"] = int(outputs[0].size)
        sums = {str(b): float(by_bits[b].astype(np.float64).sum()) for b in cfg.bits}
        row["nll"] = {b: round(act.mean_nll(t, row["n_targets"]), 6) for b, t in sums.items()}
        row["nll_sum"] = sums
    return row


def _state(cfg: OutliersConfig, ctx) -> ProbeState:
    from diffeval.probes.activations import StatsState  # torch: loaded when a run starts

    return StatsState(ctx.n_layers)


def _aggregate(cfg: OutliersConfig, records: list[dict], models: list[dict], extra: dict):
    return by_model(records, models, lambda m, mine: _summary(cfg, m["label"], mine, extra[m["label"]]))


def _summary(cfg: OutliersConfig, label: str, mine: list[dict], stats: dict) -> tuple[list[dict], dict]:
    """One model's Table-5 rows, top-1 per layer, and the metric per bit width."""
    seqs = [r for r in mine if r["kind"] == "sequence"]
    out: dict[str, Any] = {"n_tokens": metric(sum(r["n_tokens"][0] for r in seqs), len(seqs), None)}
    cells = T.stats_cells(label, stats, len(seqs), out)
    for b in cfg.bits:
        cell = (_nll_at(cfg, seqs, b, out) if cfg.metric == "nll"
                else _accuracy_at([r for r in mine if r["kind"] == "needle" and r["bits"] == b], b, out))
        cells.append({"model": label, **T.BLANK, "kind": "quant", "bits": b, "metric": cfg.metric, **cell})
    return cells, out


def _nll_at(cfg: OutliersConfig, seqs: list[dict], b: int, out: dict) -> dict:
    """Mean token NLL at b bits (t interval of the per-sequence means around it) and, with the
    16-bit baseline in the run, its change, paired over the same sequences."""
    n = sum(r["n_targets"] for r in seqs)
    value = act.mean_nll(_ordered_sum(seqs, b), n)
    _, ci = mean_ci([r["nll_sum"][str(b)] / r["n_targets"] for r in seqs])
    ci = None if ci is None else (value - (ci[1] - ci[0]) / 2, value + (ci[1] - ci[0]) / 2)
    cell = {"value": round(value, 6), "n": n, **({"ci95": [round(x, 6) for x in ci]} if ci else {})}
    out[f"nll@bits={b}"] = metric(value, n, False, ci)
    if act.BASELINE_BITS in cfg.bits:
        base = str(act.BASELINE_BITS)
        delta = value - act.mean_nll(_ordered_sum(seqs, act.BASELINE_BITS), n)
        _, dci = mean_ci([(r["nll_sum"][str(b)] - r["nll_sum"][base]) / r["n_targets"] for r in seqs])
        cell["delta"] = round(delta, 6)
        if dci is not None:
            h = (dci[1] - dci[0]) / 2
            cell["delta_ci95"] = [round(delta - h, 6), round(delta + h, 6)]
    return cell


def _accuracy_at(rows: list[dict], b: int, out: dict) -> dict:
    n = len(rows)
    mean = sum(r["score"] for r in rows) / n
    ci = wilson(mean * n, n)
    out[f"accuracy@bits={b}"] = metric(mean, n, True, ci)
    return {"value": round(mean, 6), "n": n, "ci95": [round(x, 6) for x in ci]}


def _ordered_sum(seqs: list[dict], b: int) -> float:
    total = 0.0  # summed in sequence order, as the statistics pass saw them
    for r in seqs:
        total += r["nll_sum"][str(b)]
    return total


PROBE = Probe(
    name=NAME, version=VERSION, Config=OutliersConfig, generate=_generate, requests=_requests, score=_score,
    aggregate=_aggregate, cell_keys=("kind", "activation", "layer", "bits"),
    grid_params=("n_tokens", "needle_samples", "depths"), data=_data,
    state=_state, native_only="it reads attention logits and hidden states inside diffeval's own attention code "
                              "and quantises the logits there",
    group=lambda s: f"b{s.bits}/{s.item.group}" if isinstance(s, _Needle) else None,
    views=(Figure("quant_curve", "outliers:quant_view", stem="quant_curve"),
           Figure("outliers_by_layer", "outliers:by_layer_view", stem="outliers_by_layer"),
           Table("outliers_table", T.outliers_table), Table("quant_table", T.quant_table)),
    quick={"n_tokens": "500", "seq_len": 128, "bits": [16, 4], "metric": "nll"},
    description="activation outliers (Table 5) and the metric under attention-logit quantization",
    summary="Activation outliers: top-k / median of |attention logits| and |hidden states|, and the\n"
            "metric with attention logits quantized to fewer bits (statistics and quantization always\n"
            "run on the reference attention path, whatever --backend says).",
    examples=("diffeval outliers --tokens 8k", "diffeval outliers --ckpt path/to/model --data corpus/ --tokens all"),
    method="top-k and median of |attention logits| (scaled, pre-softmax, causally visible) and |hidden "
           "states| over every layer, head and position; quantization: symmetric absmax per query row; "
           "metric per bit width: mean token NLL over all tokens, or needle accuracy with a Wilson interval")
