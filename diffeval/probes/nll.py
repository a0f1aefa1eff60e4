"""`nll`: long-sequence negative log-likelihood by position (the DIFF paper's section 3.3).
Each sequence is BOS + `length` tokens of one document (with `pack`, of documents joined by
EOS / a blank line); position p is the p-th text token after BOS. The curve is the cumulative
average NLL up to log-spaced positions (1, 2, 4, ..., length) and the mean NLL per bucket
between them, each with a 95% t interval across sequences (TokenNLL: no n x vocab logits)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from diffeval.errors import ConfigError
from diffeval.probes.base import Figure, Generated, Probe, Table, TableData, by_model, metric
from diffeval.probes.config import ModelDefault, ProbeConfig, option
from diffeval.probes.streams import document_sequences, documents
from diffeval.requests import TokenNLL, ids_sha256
from diffeval.specs import as_text, check_int, parse_length, token_count
from diffeval.stats import mean_ci
from diffeval.textdata import describe_files, text_files

NAME = "nll"
VERSION = 2  # 2: BOS by the tokenizer's rule; NLL over (N, V) rows, float64-summed
SYNTHETIC_DOCS = 8  # sequences drawn from the generated prose when `docs` is not given
_TASK_KEY = int.from_bytes(NAME.encode("ascii"), "big")


def _positions(value: Any) -> tuple[int, ...]:
    text = as_text(value).strip().lower()
    if text in ("", "log"):
        return ()
    return tuple(token_count(p, "positions") for p in text.split(","))


def _docs(value: Any) -> Optional[int]:
    if isinstance(value, str):
        return None if value.strip().lower() == "all" else token_count(value, "docs")
    return value


@dataclass(frozen=True)
class NllConfig(ProbeConfig):
    PROBE = NAME
    length: int = option(flag="--len", parse=lambda v: parse_length(v, "length"), aliases=("lengths",),
                         model_default=ModelDefault(reserve=1),
                         help="Tokens per sequence after BOS (4k, 64K, ...). Default: 4k, or less when a model's "
                              "position limit is shorter.")
    data: str = option("synthetic", help="synthetic (generated documents), a .txt file, a folder of .txt files (one "
                       "document each), or a .jsonl file.")
    text_field: str = option("text", help="JSONL field holding each document's text.")
    docs: Optional[int] = option(None, parse=_docs, cli_type=int, aliases=("samples",),
                                 help="Sequences to evaluate (default: every document; synthetic: 8). Too few is an "
                                      "error.")
    pack: bool = option(False, help="Join documents (EOS or a blank line between) instead of skipping ones shorter "
                        "than --len.")  # each sequence still starts at a document; the rest of its last is dropped
    positions: tuple[int, ...] = option((), parse=_positions, shown="log",
                                        help="Curve points: log (1, 2, 4, ..., len) or a list like 1k,4k,16k (the end "
                                             "is always added).")
    seed: int = option(0, help="Seed of the sample generator.")

    def __post_init__(self) -> None:
        check_int("length", self.length, 1)
        if not isinstance(self.data, str) or not self.data.strip():
            raise ConfigError(f"{self.data!r} must be 'synthetic' or a path", "data")
        if not isinstance(self.text_field, str) or not self.text_field:
            raise ConfigError(f"{self.text_field!r} must name a JSONL field", "text_field")
        if self.docs is not None:
            check_int("docs", self.docs, 1)
        if not isinstance(self.pack, bool):
            raise ConfigError(f"{self.pack!r} must be true or false", "pack")
        object.__setattr__(self, "positions", tuple(int(p) for p in self.positions))
        bad = [p for p in self.positions if not 1 <= p <= self.length]
        if bad:
            raise ConfigError(f"{bad[0]} lies outside 1..{self.length} (the sequence length)", "positions")
        if list(self.positions) != sorted(set(self.positions)):
            raise ConfigError(f"{list(self.positions)} must be increasing without repeats", "positions")
        check_int("seed", self.seed, 0)

    def curve_positions(self) -> list[int]:
        if self.positions:
            out = list(self.positions)
        else:
            out = [1 << k for k in range(self.length.bit_length()) if 1 << k <= self.length]
        return out if out[-1] == self.length else out + [self.length]

    def extra(self) -> dict:
        return {"positions": self.curve_positions(), "short_documents": "packed" if self.pack else "skipped"}


def _files(cfg: NllConfig) -> Optional[list[Path]]:
    if cfg.data == "synthetic":
        return None
    path = Path(cfg.data).expanduser()
    if path.is_file() and path.suffix == ".jsonl":
        return [path]
    return text_files(path, "data")


def _data(cfg: NllConfig) -> dict:
    files = _files(cfg)
    if files is None:
        return {"text": {"kind": "synthetic", "generator": "diffeval essay documents with repeated sentences",
                         "seed": cfg.seed}}
    return {"text": describe_files(cfg.data, files)}


@dataclass(frozen=True)
class _Seq:
    index: int
    doc: str
    ids: tuple[int, ...]  # BOS + text tokens

    @property
    def id(self) -> str:
        return f"seq{self.index}"


def _generate(cfg: NllConfig, ctx) -> Generated:
    tok = ctx.need_tokenizer(NAME)
    bos = [] if tok.bos_id is None else [int(tok.bos_id)]
    ctx.check_length(len(bos) + cfg.length, "sequence")
    want = cfg.docs if cfg.docs is not None else (SYNTHETIC_DOCS if cfg.data == "synthetic" else None)
    files = _files(cfg)
    sep = [int(tok.eos_id)] if tok.eos_id is not None else list(tok.encode("\n\n"))
    seqs, skipped = document_sequences(documents(files, cfg.text_field, cfg.seed), tok.encode, cfg.length, want,
                                       sep if cfg.pack else None)
    out = [_Seq(i, name, tuple(bos + ids)) for i, (name, ids) in enumerate(seqs)]
    if not out or (want is not None and len(out) < want):
        how = "joined" if cfg.pack else f"of at least {cfg.length} tokens ({skipped} shorter skipped)"
        asked = f"the {want} asked for" if want is not None else "one"
        raise ConfigError(f"{cfg.data} holds {len(out)} sequences {how} under the tokenizer of {ctx.label}, "
                          f"fewer than {asked}; use fewer docs, a shorter length, or pack", "data")
    return Generated(out, {"sequences": len(out), "short_documents_skipped": skipped, "packed": cfg.pack})


def _requests(cfg: NllConfig, seq: _Seq, ctx) -> list:
    return [TokenNLL(seq.ids)]


def curve(nll: np.ndarray, first: int, points: list[int]) -> tuple[list[float], list[list[float]]]:
    """nll (T,) of text positions first, first+1, ... -> (cumulative average NLL at each point,
    [[start, end, mean NLL, count] per bucket (previous point, point]]); points before `first`
    are dropped."""
    pos = np.arange(first, first + nll.size)
    csum = np.cumsum(nll.astype(np.float64))
    cum, buckets, prev = [], [], 0
    for p in points:
        if p < first:
            continue
        k = int(np.searchsorted(pos, p, side="right"))  # tokens at positions <= p
        cum.append(float(csum[k - 1] / k))
        lo = int(np.searchsorted(pos, prev, side="right"))
        count = k - lo
        buckets.append([prev + 1, p, float((csum[k - 1] - (csum[lo - 1] if lo else 0.0)) / count), count])
        prev = p
    return cum, buckets


def _score(cfg: NllConfig, seq: _Seq, outputs: list, ctx) -> dict:
    nll = outputs[0]  # (len(ids) - 1,)
    first = 1 if ctx.tokenizer.bos_id is not None else 2  # without BOS the first token is not predicted
    points = [p for p in cfg.curve_positions() if p >= first]
    cum, buckets = curve(nll, first, points)
    return {"id": seq.id, "doc": seq.doc, "n_tokens": [len(seq.ids)], "prediction": [], "score": None,
            "ids_sha256": ids_sha256(seq.ids), "n_targets": int(nll.size), "nll_sum": float(nll.astype(np.float64).sum()),
            "positions": points, "cumulative": [round(v, 6) for v in cum],
            "buckets": [[s, e, round(m, 6), c] for s, e, m, c in buckets]}


def _aggregate(cfg: NllConfig, records: list[dict], models: list[dict], extra: dict):
    return by_model(records, models, lambda m, mine: _summary(cfg, m, mine))


def _summary(cfg: NllConfig, m: dict, mine: list[dict]) -> tuple[list[dict], dict]:
    """One model's curve and bucket cells (mean, t interval across sequences) and its NLL."""
    label, n = m["label"], len(mine)
    bos = 1 if mine[0]["n_tokens"][0] == cfg.length + 1 else 0
    limit = m["max_positions"] - bos  # text positions the model was trained for
    cells, out = [], {}
    for j, p in enumerate(mine[0]["positions"]):
        s, e, _, count = mine[0]["buckets"][j]
        for kind, start, end, name, values in (
                ("cumulative", 1, p, f"cum_nll@position={p}", [r["cumulative"][j] for r in mine]),
                ("bucket", s, e, f"nll@bucket={s}-{e}", [r["buckets"][j][2] for r in mine])):
            mean, ci = mean_ci(values)
            cells.append({"model": label, "kind": kind, "position": end, "start": start, "n": n,
                          **({"tokens": count} if kind == "bucket" else {}), "mean": round(mean, 6),
                          **({"ci95": [round(x, 6) for x in ci]} if ci else {}), "beyond_limit": end > limit})
            out[name] = metric(mean, n, False, ci)
    mean, ci = mean_ci([r["nll_sum"] / r["n_targets"] for r in mine])
    out["nll"] = metric(mean, n, False, ci)
    out["ppl"] = metric(math.exp(mean), n, False, None if ci is None else [math.exp(x) for x in ci])
    out["position_limit"] = metric(limit, n, None)
    return cells, out


def _pos(p: int) -> str:
    return f"{p // 1024}K" if p >= 1024 and p % 1024 == 0 else str(p)


def bucket_table(results: dict) -> TableData:
    """Mean NLL per position bucket, models side by side (mean ± half-width of the 95% interval)."""
    labels = [m["label"] for m in results["models"]]
    cells = {(c["model"], c["position"]): c for c in results["cells"] if c["kind"] == "bucket"}
    ends = sorted({c["position"] for c in results["cells"] if c["kind"] == "bucket"})
    p = results["task"]["params"]

    def fmt(c):
        if c is None:
            return "-"
        half = f" ± {(c['ci95'][1] - c['ci95'][0]) / 2:.3f}" if "ci95" in c else ""
        return f"{c['mean']:.3f}{half}{' *' if c['beyond_limit'] else ''}"

    rows = []
    for e in ends:
        start = next(cells[(m, e)]["start"] for m in labels if (m, e) in cells)
        rows.append([_pos(e) if start == e else f"{_pos(start)}-{_pos(e)}", *[fmt(cells.get((m, e))) for m in labels]])
    notes = [f"{m['label']} ({m['family']}): mean NLL {met['nll']['value']:.4f}, perplexity {met['ppl']['value']:.3f} "
             f"over {met['nll']['n']} sequences" for m in results["models"] if (met := results["metrics"][m["label"]])]
    return TableData(f"mean NLL per position bucket: {p['data']}, {p['length']} tokens (nats; ± 95% interval across "
                     "sequences; * beyond the position limit)", ["positions", *labels], rows, notes=notes)


PROBE = Probe(
    name=NAME, version=VERSION, Config=NllConfig, generate=_generate, requests=_requests, score=_score,
    aggregate=_aggregate, cell_keys=("kind", "position"), grid_params=("docs",), data=_data, uses=(),
    views=(Figure("nll_curve", "nll:curve_view", stem="nll_curve"), Table("nll_table", bucket_table)),
    quick={"length": 160, "docs": 4},
    description="cumulative average NLL by position up to the full length",
    summary="Cumulative average NLL by position (DIFF paper 3.3): curve with 95% bands, per-bucket\n"
            "table, perplexity; past the trained length with --allow-beyond-max-positions.",
    examples=("diffeval nll --docs 4", "diffeval nll --ckpt path/to/model --data books/ --len 32k --docs 20"),
    method="token NLL (nats) of every text position after BOS, chunked (no n x vocab logits); "
           "per sequence the cumulative average up to each point and the mean per bucket between "
           "points; across sequences the mean and a 95% Student t interval; ppl = exp(mean NLL)")
