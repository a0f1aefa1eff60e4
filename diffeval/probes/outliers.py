"""`outliers`: activation outliers (the DIFF paper's Table 5) and the metric under
attention-logit quantization (its Figure 8), as a probe.

Samples are the text's sequences (each: one statistics pass that also gives the unquantized
NLL, then one NLL pass per quantized bit width) and, for `metric: needle`, needle prompts
once per bit width. The statistics stream across sequences in the probe's state, which is
saved with the resume cache after every sequence. The pure parts live in
probes/activations.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from diffeval.errors import ConfigError
from diffeval.probes import retrieval as R
from diffeval.probes import streams as act
from diffeval.probes.base import Figure, Probe, ProbeState, Table, TableData, metric
from diffeval.probes.config import ModelDefault, ProbeConfig, option
from diffeval.probes.scoring import answer_text, string_match_all
from diffeval.requests import Hook, Stats, TokenNLL, ids_sha256
from diffeval.specs import check_int, parse_bits, parse_length, parse_tokens
from diffeval.stats import mean_ci, wilson
from diffeval.textdata import describe_files, file_blocks, text_files

NAME = "outliers"
VERSION = 2  # 2: runs on the probe pipeline
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


# --- data -----------------------------------------------------------------------------------


def _files(cfg: OutliersConfig) -> Optional[list[Path]]:
    return None if cfg.data == "synthetic" else text_files(Path(cfg.data), "data")


def text_blocks(data: str, seed: int, files: Optional[list[Path]] = None) -> Iterator[str]:
    """The evaluation text as blocks: essay paragraphs for "synthetic", else the files in order."""
    if data == "synthetic":
        yield from act.essay_paragraphs(act.synthetic_rng(seed))
        return
    for path in files if files is not None else text_files(Path(data), "data"):
        yield from file_blocks(path, "data")


def _data(cfg: OutliersConfig) -> dict:
    files = _files(cfg)
    text = ({"kind": "synthetic", "generator": "diffeval essay paragraphs", "seed": cfg.seed} if files is None
            else describe_files(cfg.data, files))
    out = {"text": text}
    if cfg.metric == "needle" and cfg.bits:
        out.update(R.haystack_data(cfg.grid().haystack))
    return out


# --- samples and requests -------------------------------------------------------------------


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
    files = _files(cfg)
    if cfg.data != "synthetic" and cfg.n_tokens is not None:
        stream = act.token_stream(text_blocks(cfg.data, cfg.seed, files), tok.encode)
        have = act.count_tokens(stream, cfg.n_tokens, cfg.seq_len, tok.bos_id is not None)
        if have < cfg.n_tokens:
            raise ConfigError(f"{cfg.data} holds {have} tokens in sequences of {cfg.seq_len} under the "
                              f"tokenizer of {ctx.label}, fewer than the {cfg.n_tokens} asked for; "
                              "ask for fewer tokens or all", "data")
    stream = act.token_stream(text_blocks(cfg.data, cfg.seed, files), tok.encode)
    out: list = [_Sequence(i, off, tuple(seq))
                 for i, (off, seq) in enumerate(act.sequences(stream, cfg.n_tokens, cfg.seq_len, tok.bos_id))]
    if cfg.n_tokens is None and (not out or len(out[0].ids) < cfg.seq_len):  # 'all' of too little text
        have = sum(len(s.ids) for s in out)
        raise ConfigError(f"{cfg.data} holds {have} tokens under the tokenizer of {ctx.label}, less than one "
                          f"sequence of {cfg.seq_len}; give more text or a shorter --len", "data")
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


class _StatsState(ProbeState):
    def __init__(self, n_layers: int) -> None:
        from diffeval.probes.activations import OutlierStats  # torch: loaded when a run starts

        self.stats = OutlierStats(n_layers)

    def save(self, path: Path, keys: list[str]) -> None:
        from diffeval.results import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **self.stats.state(), **{"meta::keys": np.asarray(keys, dtype=str)})

    def load(self, path: Path) -> list[str]:
        with np.load(path) as z:
            keys = [str(k) for k in z["meta::keys"]]
            self.stats.load_state({k: z[k] for k in z.files if not k.startswith("meta::")})
        return keys

    def finalise(self) -> dict:
        return {"activations": self.stats.table(), "per_layer_top1": self.stats.per_layer()}


# --- aggregation, figures, tables -----------------------------------------------------------


def _aggregate(cfg: OutliersConfig, records: list[dict], models: list[dict], extra: dict):
    cells: list[dict] = []
    metrics: dict[str, dict] = {}
    blank = {"activation": None, "layer": None, "bits": None}
    for m in models:
        label = m["label"]
        seqs = [r for r in records if r["model"] == label and r["kind"] == "sequence"]
        n_seq = len(seqs)
        out: dict[str, Any] = {"n_tokens": metric(sum(r["n_tokens"][0] for r in seqs), n_seq, None)}
        table = extra[label]["activations"]
        for name, row in table.items():
            cells.append({"model": label, **blank, "kind": "activation", "activation": name, "n": int(row["count"]),
                          **{k: round(float(row[k]), 6) for k in act.STAT_KEYS if k in row},
                          "median_exact": bool(row["median_exact"])})
            for k in act.STAT_KEYS:
                if k in row:
                    out[f"{name}.{k}"] = metric(row[k], int(row["count"]), None)
        for name, tops in extra[label]["per_layer_top1"].items():
            cells.extend({"model": label, **blank, "kind": "layer", "activation": name, "layer": i,
                          "n": n_seq, "top1": round(float(v), 6)} for i, v in enumerate(tops))
        if cfg.metric == "nll":
            base_value = act.mean_nll(_ordered_sum(seqs, act.BASELINE_BITS), sum(r["n_targets"] for r in seqs)) \
                if act.BASELINE_BITS in cfg.bits else None
        for b in cfg.bits:
            if cfg.metric == "nll":
                n = sum(r["n_targets"] for r in seqs)
                value = act.mean_nll(_ordered_sum(seqs, b), n)
                # 95% interval: the t half-width of the per-sequence means around the token mean
                _, ci = mean_ci([r["nll_sum"][str(b)] / r["n_targets"] for r in seqs])
                ci = None if ci is None else (value - (ci[1] - ci[0]) / 2, value + (ci[1] - ci[0]) / 2)
                cell = {"value": round(value, 6), "n": n, **({"ci95": [round(x, 6) for x in ci]} if ci else {})}
                out[f"nll@bits={b}"] = metric(value, n, False, ci)
                if act.BASELINE_BITS in cfg.bits:  # the change vs 16 bits, paired over the same sequences
                    base = str(act.BASELINE_BITS)
                    diffs = [(r["nll_sum"][str(b)] - r["nll_sum"][base]) / r["n_targets"] for r in seqs]
                    delta = value - base_value
                    _, dci = mean_ci(diffs)
                    cell["delta"] = round(delta, 6)
                    if dci is not None:
                        h = (dci[1] - dci[0]) / 2
                        cell["delta_ci95"] = [round(delta - h, 6), round(delta + h, 6)]
            else:
                rows = [r for r in records if r["model"] == label and r["kind"] == "needle" and r["bits"] == b]
                n = len(rows)
                mean = sum(r["score"] for r in rows) / n
                ci = wilson(mean * n, n)
                cell = {"value": round(mean, 6), "n": n, "ci95": [round(x, 6) for x in ci]}
                out[f"accuracy@bits={b}"] = metric(mean, n, True, ci)
            cells.append({"model": label, **blank, "kind": "quant", "bits": b, "metric": cfg.metric, **cell})
        metrics[label] = out
    return cells, metrics


def _ordered_sum(seqs: list[dict], b: int) -> float:
    total = 0.0  # summed in sequence order, as the statistics pass saw them
    for r in seqs:
        total += r["nll_sum"][str(b)]
    return total


def _quant_curve(results: dict, run):
    from diffeval.plotting.outliers import quant_figure

    if not any(c["kind"] == "quant" for c in results["cells"]):
        return None
    return quant_figure(results["cells"], [m["label"] for m in results["models"]], results["task"]["params"]["metric"])


def _by_layer(results: dict, run):
    from diffeval.plotting.outliers import layer_figure

    per_layer: dict[str, dict[str, list[float]]] = {}
    for c in results["cells"]:
        if c["kind"] == "layer":
            per_layer.setdefault(c["model"], {}).setdefault(c["activation"], []).append(c["top1"])
    return layer_figure({m["label"]: per_layer.get(m["label"], {}) for m in results["models"]})


SHORT = {"attention_logits": "attn logits", "attention_logits_map1": " map 1",
         "attention_logits_map2": " map 2", "hidden_states": "hidden"}  # table rows, Table 5's names


def outliers_table(results: dict) -> TableData:
    """Table 5: one row per model and activation type."""
    counts = sorted({results["metrics"][m["label"]]["n_tokens"]["value"] for m in results["models"]})
    rows, styles, sections = [], {}, set()
    for m in results["models"]:
        sections.add(len(rows))
        for i, row in enumerate(c for c in results["cells"] if c["model"] == m["label"] and c["kind"] == "activation"):
            name = row["activation"]
            if name.endswith(("_map1", "_map2")):
                styles[len(rows)] = "dim"
            rows.append([m["label"] if i == 0 else "", SHORT.get(name, name),
                         *[_num(row.get(f"top{r}")) for r in act.RANKS], _num(row["median"])])
    return TableData(f"Activation outliers: |x| over {', '.join(f'{int(n):,}' for n in counts)} tokens per model",
                     ["model", "activation", *[f"top-{r}" for r in act.RANKS], "median"], rows, styles=styles,
                     sections=frozenset(sections - {0}))


def quant_table(results: dict) -> TableData:
    """The metric per attention-logit bit width (no rows without quantization)."""
    quant = [c for c in results["cells"] if c["kind"] == "quant"]
    bits = sorted({c["bits"] for c in quant}, reverse=True)
    which = results["task"]["params"]["metric"]
    by = {(c["model"], c["bits"]): c["value"] for c in quant}
    rows = [[m["label"], *[_num(by.get((m["label"], b)), 3 if which == "needle" else 4) for b in bits]]
            for m in results["models"]] if quant else []
    return TableData(f"{'Mean token NLL' if which == 'nll' else 'Needle accuracy'} vs attention-logit bits",
                     ["model", *[f"{b} bits" + (" (float)" if b == 16 else "") for b in bits]], rows)


def _num(v, digits: Optional[int] = None) -> str:
    """Fixed digits when given; else one decimal from 10 up (as Table 5), 3 significant below."""
    if v is None:
        return "-"
    if digits is not None:
        return f"{v:.{digits}f}"
    return f"{v:.1f}" if abs(v) >= 9.95 else f"{v:#.3g}"


PROBE = Probe(
    name=NAME, version=VERSION, Config=OutliersConfig, generate=_generate, requests=_requests, score=_score,
    aggregate=_aggregate, cell_keys=("kind", "activation", "layer", "bits"),
    grid_params=("n_tokens", "needle_samples", "depths"), data=_data,
    state=lambda cfg, ctx: _StatsState(ctx.n_layers),
    group=lambda s: f"b{s.bits}/{s.item.group}" if isinstance(s, _Needle) else None,
    views=(Figure("quant_curve", _quant_curve, stem="quant_curve"),
           Figure("outliers_by_layer", _by_layer, stem="outliers_by_layer"),
           Table("outliers_table", outliers_table), Table("quant_table", quant_table)),
    description="activation outliers (Table 5) and the metric under attention-logit quantization",
    summary="Activation outliers: top-k / median of |attention logits| and |hidden states|, and the\n"
            "metric with attention logits quantized to fewer bits (statistics and quantization always\n"
            "run on the reference attention path, whatever --backend says).",
    examples=("diffeval outliers --tokens 8k", "diffeval outliers --ckpt path/to/model --data corpus/ --tokens all"),
    method="top-k and median of |attention logits| (scaled, pre-softmax, causally visible) and |hidden "
           "states| over every layer, head and position; quantization: symmetric absmax per query row; "
           "metric per bit width: mean token NLL over all tokens, or needle accuracy with a Wilson interval")
