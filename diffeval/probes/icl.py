"""`icl`: many-shot in-context classification and its robustness to the order of the
demonstrations (the DIFF paper's section 3.5; HELMET's label-remapping variant). A block is
one (budget, arrangement, permutation): the first k demonstrations of the seeded pool taken
in class rounds (class-balanced; its coverage recorded) in the order the arrangement and
permutation give (probes/icl_data.py); a sample is one (block, test query). Scoring is
constrained choice by default: the log-likelihood of each label (sum, per-token mean, or per
byte as lm-eval's acc_norm; `score_by` picks), one Choice request that prefills a block once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from diffeval.errors import ConfigError
from diffeval.probes import retrieval as R
from diffeval.probes.base import Figure, Generated, Probe, Table, TableData, by_model, rate
from diffeval.probes.config import ModelDefault, ProbeConfig, option
from diffeval.probes.icl_data import (
    SYNTHETIC, Pieces, blocks, check_template, class_counts, class_rounds, coverage, distinct_candidates, fill_budgets,
    load_dataset, order_cells, split)
from diffeval.probes.prompts import PieceEncoder
from diffeval.requests import Choice, Generate
from diffeval.specs import check_int, parse_counts, parse_lengths, parse_names, unescape
from diffeval.textdata import describe_files

NAME = "icl"
VERSION = 3  # 3: class-balanced demonstrations (2: BOS by the tokenizer's rule, chat as apply_chat_template)
SCORE_BY = {"sum": "logprob", "mean": "mean_logprob", "norm": None}  # norm: per byte of the label's text
ARRANGEMENTS = ("random", "alternating", "grouped")
MODES = ("choice", "generate")


@dataclass(frozen=True)
class IclConfig(ProbeConfig):
    PROBE = NAME
    data: str = option("synthetic-6", help="synthetic-6, synthetic-50, synthetic-77, synthetic-150, or a .jsonl / .csv "
                       "file.")
    text_field: str = option("text", help="Field (column) holding the input text.")
    label_field: str = option("label", help="Field (column) holding the label.")
    lengths: tuple[int, ...] = option((), flag="--len", parse=lambda v: parse_lengths(v, allow_empty=True), model_default=ModelDefault(unless="shots"),
                                      help="Fill demonstrations up to these prompt lengths (4k,16k). Default: 4k or "
                                           "the models' limit, unless --shots.")
    shots: tuple[int, ...] = option((), parse=parse_counts, help="Numbers of demonstrations instead of lengths, e.g. "
                                    "1,10,100.")
    n_test: int = option(50, flag="--test", aliases=("samples",), help="Test queries (balanced over classes).")
    permutations: int = option(3, help="Orders of the same demonstrations per arrangement.")
    arrangements: tuple[str, ...] = option(("random",), parse=parse_names, help="random, alternating, grouped (a list).")
    mode: str = option("choice", help="choice (log-likelihood of every label) or generate (greedy, exact match).")
    score_by: str = option("sum", help="choice: rank labels by the sum, the per-token mean, or the per-byte "
                           "(norm: lm-eval's acc_norm) log-likelihood.")
    remap_labels: bool = option(False, help="Replace label names by random integers per block.")
    template: str = option("input: {text}\nlabel: {label}", parse=unescape,
                           help="A demonstration, with {text} and {label}.")
    separator: str = option("\n\n", parse=unescape, help="Between demonstrations.")
    seed: int = R.seed_option()

    def __post_init__(self) -> None:
        for name in ("lengths", "shots", "arrangements"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if bool(self.lengths) == bool(self.shots):
            raise ConfigError("give either lengths (fill the context) or shots (numbers of demonstrations)", "shots")
        for k in self.shots:
            check_int("shots", k, 1)
        if list(self.shots) != sorted(set(self.shots)):
            raise ConfigError(f"{list(self.shots)} must be increasing without repeats", "shots")
        check_int("n_test", self.n_test, 1)
        check_int("permutations", self.permutations, 1)
        bad = [a for a in self.arrangements if a not in ARRANGEMENTS]
        if bad or not self.arrangements or len(set(self.arrangements)) != len(self.arrangements):
            raise ConfigError(f"{list(self.arrangements)}: choose from {', '.join(ARRANGEMENTS)}, each once", "arrangements")
        if self.mode not in MODES:
            raise ConfigError(f"{self.mode!r}: choose {' or '.join(MODES)}", "mode")
        if self.score_by not in SCORE_BY:
            raise ConfigError(f"{self.score_by!r}: choose {', '.join(SCORE_BY)}", "score_by")
        check_template(self.template)
        if not self.separator:
            raise ConfigError("must not be empty", "separator")
        check_int("seed", self.seed, 0)


@dataclass(frozen=True)
class _Query:
    id: str
    length: Optional[int]  # the requested prompt budget (lengths mode)
    shots: int  # demonstrations in the block
    arrangement: str
    permutation: int
    query: int
    prompt: tuple[int, ...]
    candidates: tuple[tuple[int, ...], ...]  # one per label, in `shown` order
    shown: tuple[str, ...]  # the label strings as the prompt shows them
    labels: tuple[str, ...]  # the original labels, same order
    gold: int  # index of the correct label
    block_tokens: int
    text: str
    shown_classes: int  # classes among the block's demonstrations
    label_bytes: tuple[int, ...]  # per candidate: UTF-8 bytes of its text (acc_norm's length)


def _generate(cfg: IclConfig, ctx) -> Generated:
    tok = ctx.need_tokenizer(NAME)
    ds = load_dataset(cfg.data, cfg.text_field, cfg.label_field, cfg.seed)
    pool, test = split(ds, cfg.n_test, cfg.seed, max(cfg.shots, default=1))
    pool = class_rounds(pool)
    pieces = Pieces(PieceEncoder(tok), cfg.template, cfg.separator, ctx.prompt_format)
    prefix = ctx.prompt_format.prefix_ids(tok)
    queries = [pieces.query(e) for e in test]
    labels = ds.labels

    budgets = [(None, k) for k in cfg.shots] + fill_budgets(cfg, pool, labels, pieces, len(prefix), queries)
    out: list[_Query] = []
    for length, k in budgets:
        n_shown = coverage(pool[:k], test, labels)["classes_shown"]
        for arrangement, p, mapping, ids in blocks(cfg, k, pool, labels, pieces):
            block = tuple(prefix + ids)
            shown = tuple(mapping[c] for c in labels)
            for qi, (e, (piece, qids)) in enumerate(zip(test, queries)):
                prompt = block + tuple(qids)
                cands = distinct_candidates(tuple(pieces.label(piece, s) for s in shown), shown)
                nbytes = tuple(len(tok.decode(list(c)).encode("utf-8")) for c in cands)
                ctx.check_length(len(prompt) + max(len(c) for c in cands), "prompt",
                                 "lengths" if length is not None else "shots")
                budget = f"L{length}" if length is not None else f"k{k}"
                out.append(_Query(f"{budget}-{arrangement}-p{p}-q{qi}", length, k, arrangement, p, qi, prompt,
                                  cands, shown, labels, labels.index(e.label), len(block), e.text, n_shown, nbytes))
    return Generated(out, {"pool": len(pool), "test": len(test), "classes": len(labels),
                           "test_class_counts": class_counts(test, labels),
                           "shots": {str(length if length is not None else k): k for length, k in budgets},
                           "coverage": {str(length if length is not None else k): coverage(pool[:k], test, labels)
                                        for length, k in budgets}})


def _requests(cfg: IclConfig, q: _Query, ctx) -> list:
    if cfg.mode == "choice":
        return [Choice(q.prompt, q.candidates)]
    return [Generate(q.prompt, max(len(c) for c in q.candidates) + 2, "\n")]


def _score(cfg: IclConfig, q: _Query, outputs: list, ctx) -> dict:
    row: dict[str, Any] = {"id": q.id, "length": q.length, "shots": q.shots, "arrangement": q.arrangement,
                           "permutation": q.permutation, "query": q.query, "n_tokens": [len(q.prompt)],
                           "block_tokens": q.block_tokens, "text": q.text, "label": q.labels[q.gold],
                           "expected": q.shown[q.gold], "classes_shown": q.shown_classes}
    if cfg.mode == "generate":
        pred = ctx.tokenizer.decode(list(outputs[0])).split("\n")[0].strip()
        return {**row, "prediction": [pred], "score": float(pred == q.shown[q.gold])}
    scores = outputs[0]
    field = SCORE_BY[cfg.score_by]
    value = [getattr(s, field) if field else s.logprob / max(1, n) for s, n in zip(scores, q.label_bytes)]
    best = int(np.argmax(value))  # ties: the first label
    rank = 1 + sum(v > value[q.gold] for v in value)
    gold, top = scores[q.gold], scores[best]
    return {**row, "prediction": [q.shown[best]], "score": float(best == q.gold), "gold_rank": int(rank),
            "gold_logprob": round(gold.logprob, 6), "gold_mean_logprob": round(gold.mean_logprob, 6),
            "pred_logprob": round(top.logprob, 6), "pred_mean_logprob": round(top.mean_logprob, 6),
            "gold_bytes": q.label_bytes[q.gold], "pred_bytes": q.label_bytes[best]}


def _budget(r: dict) -> str:
    return f"length={r['length']}" if r["length"] is not None else f"shots={r['shots']}"


def _aggregate(cfg: IclConfig, records: list[dict], models: list[dict], extra: dict):
    return by_model(records, models, lambda m, mine: _summary(cfg, m["label"], mine))


def _summary(cfg: IclConfig, label: str, mine: list[dict]) -> tuple[list[dict], dict]:
    """One model's cells and metrics: accuracy per budget, and per arrangement over permutations."""
    cells, out = [], {}
    groups: dict[tuple, list[dict]] = {}
    for r in mine:
        groups.setdefault((r["length"], r["shots"], r["arrangement"], r["permutation"]), []).append(r)
    budgets = list(dict.fromkeys((r["length"], r["shots"]) for r in mine))
    for length, shots in budgets:
        pooled = [r for r in mine if (r["length"], r["shots"]) == (length, shots)]
        key = _budget(pooled[0])
        out[f"accuracy@{key}"] = rate(sum(r["score"] for r in pooled), len(pooled), True, shots=shots)
        for arrangement in cfg.arrangements:
            runs = [groups[(length, shots, arrangement, p)] for p in range(cfg.permutations)]
            base = {"model": label, "length": length, "shots": shots, "arrangement": arrangement}
            cells += order_cells(base, runs, out, f"{key},arrangement={arrangement}")
    last = [r for r in mine if (r["length"], r["shots"]) == budgets[-1]]
    out["accuracy"] = rate(sum(r["score"] for r in last), len(last), True, at=_budget(last[0]))
    return cells, out


def accuracy_table(results: dict) -> TableData:
    """Accuracy per model and arrangement (rows) and budget (columns): the mean over
    permutations ± their standard deviation; the best - worst margin at the largest budget."""
    cells = [c for c in results["cells"] if c["kind"] == "arrangement"]
    budgets = list(dict.fromkeys((c["length"], c["shots"]) for c in cells))
    by = {(c["model"], c["arrangement"], c["length"], c["shots"]): c for c in cells}
    p = results["task"]["params"]
    rows = []
    for model, arrangement in dict.fromkeys((c["model"], c["arrangement"]) for c in cells):
        got = [by.get((model, arrangement, length, shots)) for length, shots in budgets]
        rows.append([model, arrangement, *[f"{c['accuracy']:.2f}±{c['std']:.2f}" if c else "-" for c in got],
                     f"{got[-1]['margin']:.3f}" if got[-1] else "-"])
    header = ["model", "order", *[f"{shots}" + (f"\n{length} tok" if length is not None else "")
                                  for length, shots in budgets], "margin"]
    return TableData(f"ICL accuracy by demonstrations: {p['data']}, {p['mode']}, {p['n_test']} queries "
                     f"(mean ± std over {p['permutations']} permutation(s))", header, rows)


def _data(cfg: IclConfig) -> dict:
    if cfg.data in SYNTHETIC:
        return {"examples": {"kind": "synthetic", "task": cfg.data, "seed": cfg.seed}}
    path = Path(cfg.data).expanduser()
    if not path.is_file():
        raise ConfigError(f"{cfg.data!r}: no such file (give synthetic-6/50/77/150 or a .jsonl / .csv file)", "data")
    return {"examples": describe_files(cfg.data, [path])}


PROBE = Probe(
    name=NAME, version=VERSION, Config=IclConfig, generate=_generate, requests=_requests, score=_score,
    aggregate=_aggregate, cell_keys=("kind", "length", "shots", "arrangement", "permutation"),
    grid_params=("lengths", "shots", "permutations", "arrangements"), data=_data, uses=("prompt_format", "batch"),
    group=lambda q: f"{q.length}/{q.shots}/{q.arrangement}/{q.permutation}",
    views=(Figure("icl_curve", "icl:curve_view", stem="icl_curve"), Figure("icl_order", "icl:order_view", stem="icl_order"),
           Table("icl_table", accuracy_table)),
    quick={"shots": "2,4", "n_test": 4, "permutations": 2, "arrangements": "random,grouped"},
    description="many-shot in-context classification and order robustness",
    summary="Many-shot in-context classification (DIFF paper 3.5): accuracy vs demonstrations, and\n"
            "the spread over orderings of the same demonstrations.",
    examples=("diffeval icl --shots 1,4,16 --test 30",
              "diffeval icl --ckpt path/to/model --data synthetic-77 --len 4k,16k"),
    method="demonstrations: the first k of the seeded pool taken in class rounds (class-balanced; "
           "coverage per budget in models[].notes.coverage, classes shown per block in the cells); choice: "
           "the label with the highest log-likelihood after the prompt (score_by: sum, per-token mean, or "
           "norm = sum / UTF-8 bytes of the label's text, lm-eval's acc_norm) among all labels; generate: "
           "greedy, exact match of the first line. Accuracy per (budget, arrangement, permutation) with a "
           "Wilson interval; per arrangement the mean over permutations, their std (ddof 1) and best - "
           "worst margin")
