"""`icl`: many-shot in-context classification and its robustness to the order of the
demonstrations (the DIFF paper's section 3.5; HELMET's label-remapping variant).

A block is one (budget, arrangement, permutation): a fixed set of demonstrations (the first
k of the seeded pool, the same set for every arrangement and permutation of that budget) in
the order the arrangement and permutation give. Every test query is asked after every
block; a sample is one (block, query). Scoring is constrained choice by default: the
log-likelihood of each label after the prompt (sum and per-token mean recorded; the
prediction uses `score_by`), through the engine's Choice request, which prefills a block
once and branches every query and every label from it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from diffeval.errors import ConfigError
from diffeval.probes import retrieval as R
from diffeval.probes.base import Figure, Generated, Probe, Table, TableData, metric
from diffeval.probes.config import ModelDefault, ProbeConfig, option
from diffeval.probes.icl_data import SYNTHETIC, Example, class_counts, load_dataset, split
from diffeval.probes.prompts import PieceEncoder
from diffeval.requests import Choice, Generate
from diffeval.specs import as_text, check_int, parse_lengths, token_count
from diffeval.stats import wilson
from diffeval.textdata import describe_files

NAME = "icl"
VERSION = 1
ARRANGEMENTS = ("random", "alternating", "grouped")
MODES = ("choice", "generate")
_TASK_KEY = int.from_bytes(NAME.encode("ascii"), "big")
REMAP_RANGE = 1000  # remapped labels are distinct integers below this


def _lengths(value) -> tuple[int, ...]:
    return () if value in ("", ()) else tuple(parse_lengths(value))


def _shots(value) -> tuple[int, ...]:
    return () if value in ("", ()) else tuple(token_count(s, "shots") for s in as_text(value).split(","))


def _names(value) -> tuple[str, ...]:
    return tuple(a.strip() for a in value.split(",")) if isinstance(value, str) else tuple(value)


def _unescape(value):
    return value.replace("\\n", "\n") if isinstance(value, str) else value


@dataclass(frozen=True)
class IclConfig(ProbeConfig):
    PROBE = NAME
    data: str = option("synthetic-6", help="synthetic-6, synthetic-50, synthetic-77, synthetic-150, or a .jsonl / .csv "
                       "file.")
    text_field: str = option("text", help="Field (column) holding the input text.")
    label_field: str = option("label", help="Field (column) holding the label.")
    lengths: tuple[int, ...] = option((), flag="--len", parse=_lengths, model_default=ModelDefault(unless="shots"),
                                      help="Fill demonstrations up to these prompt lengths (4k,16k). Default: 4k or "
                                           "the models' limit, unless --shots.")
    shots: tuple[int, ...] = option((), parse=_shots, help="Numbers of demonstrations instead of lengths, e.g. "
                                    "1,10,100.")
    n_test: int = option(50, flag="--test", aliases=("samples",), help="Test queries (balanced over classes).")
    permutations: int = option(3, help="Orders of the same demonstrations per arrangement.")
    arrangements: tuple[str, ...] = option(("random",), parse=_names, help="random, alternating, grouped (a list).")
    mode: str = option("choice", help="choice (log-likelihood of every label) or generate (greedy, exact match).")
    score_by: str = option("sum", help="choice: rank labels by the sum or the per-token mean log-likelihood.")
    remap_labels: bool = option(False, help="Replace label names by random integers per block.")
    template: str = option("input: {text}\nlabel: {label}", parse=_unescape,
                           help="A demonstration, with {text} and {label}.")
    separator: str = option("\n\n", parse=_unescape, help="Between demonstrations.")
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
        if self.score_by not in ("sum", "mean"):
            raise ConfigError(f"{self.score_by!r}: choose sum or mean", "score_by")
        if self.template.count("{text}") != 1 or self.template.count("{label}") != 1 or \
                self.template.index("{text}") > self.template.index("{label}"):
            raise ConfigError(f"{self.template!r} must hold {{text}} once, then {{label}} once", "template")
        if not self.separator:
            raise ConfigError("must not be empty", "separator")
        check_int("seed", self.seed, 0)


# --- prompt pieces ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pieces:
    """How examples become token ids under one tokenizer and prompt format."""

    enc: PieceEncoder
    cfg: IclConfig
    fmt: Any

    @property
    def before(self) -> str:
        return self.cfg.template.split("{label}")[0]

    def demo(self, e: Example, label: str, first: bool) -> tuple[int, ...]:
        text = self.cfg.template.format(text=e.text, label=label)
        if first and not self.fmt.head:
            return self.enc.plain(text)
        return self.enc.inner(text if first else self.cfg.separator + text)

    def query(self, e: Example) -> tuple[str, tuple[int, ...]]:
        """(context piece, ids): the separator and the template up to the label (its trailing
        spaces go to the label); in chat format the assistant header follows."""
        head = self.before.format(text=e.text)
        piece = self.cfg.separator + head.rstrip(" ")
        if self.fmt.name == "chat":
            piece = self.cfg.separator + head.rstrip() + self.fmt.tail
        return piece, self.enc.inner(piece)

    def label(self, piece: str, label: str) -> tuple[int, ...]:
        """The ids of a label continuing `piece` (as lm-eval splits context and continuation)."""
        lead = "" if self.fmt.name == "chat" else self.before[len(self.before.rstrip(" ")):]
        base, full = self.enc.inner(piece), self.enc.inner(piece + lead + label)
        if full[: len(base)] == base and len(full) > len(base):
            return full[len(base):]
        return self.enc.inner(lead + label)


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


def _rng(cfg: IclConfig, *parts: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([cfg.seed, _TASK_KEY, *parts])))


def arrange(demos: list[Example], arrangement: str, rng: np.random.Generator) -> list[Example]:
    """The demonstrations in one order: random (a shuffle), alternating (classes in turn, a
    seeded class order and order within each class) or grouped (class after class)."""
    if arrangement == "random":
        return [demos[i] for i in rng.permutation(len(demos))]
    by_class: dict[str, list[Example]] = {}
    for e in demos:
        by_class.setdefault(e.label, []).append(e)
    classes = [list(by_class)[i] for i in rng.permutation(len(by_class))]
    queues = [[by_class[c][i] for i in rng.permutation(len(by_class[c]))] for c in classes]
    if arrangement == "grouped":
        return [e for q in queues for e in q]
    out: list[Example] = []
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


def _label_map(cfg: IclConfig, labels: tuple[str, ...], block: tuple[int, ...]) -> dict[str, str]:
    if not cfg.remap_labels:
        return {c: c for c in labels}
    ids = _rng(cfg, 7, *block).choice(REMAP_RANGE, size=len(labels), replace=False)
    return {c: str(int(i)) for c, i in zip(labels, ids)}


def _blocks(cfg: IclConfig, k: int, pool: list[Example], labels: tuple[str, ...], pieces: _Pieces):
    """(arrangement, permutation, label map, ordered demos, block ids) of budget k."""
    for a, arrangement in enumerate(cfg.arrangements):
        for p in range(cfg.permutations):
            key = (k, a, p)
            order = arrange(pool[:k], arrangement, _rng(cfg, *key))
            mapping = _label_map(cfg, labels, key)
            ids = [t for i, e in enumerate(order) for t in pieces.demo(e, mapping[e.label], i == 0)]
            yield arrangement, p, mapping, ids


def _generate(cfg: IclConfig, ctx) -> Generated:
    tok = ctx.need_tokenizer(NAME)
    ds = load_dataset(cfg.data, cfg.text_field, cfg.label_field, cfg.seed)
    pool, test = split(ds, cfg.n_test, cfg.seed, max(cfg.shots, default=1))
    pieces = _Pieces(PieceEncoder(tok), cfg, ctx.prompt_format)
    prefix = ctx.prompt_format.prefix_ids(tok)
    queries = [pieces.query(e) for e in test]
    labels = ds.labels

    def tail_cost(mapping) -> int:  # the longest query plus its longest label
        return max(len(q) for _, q in queries) + max(len(pieces.label(queries[0][0], mapping[c])) for c in labels)

    budgets: list[tuple[Optional[int], int]] = [(None, k) for k in cfg.shots]
    if cfg.lengths:  # tokens of the first k demonstrations, for every k
        costs = np.cumsum([len(pieces.demo(e, e.label, i == 0)) for i, e in enumerate(pool)])
    for length in cfg.lengths:
        room = length - len(prefix) - tail_cost({c: c for c in labels})
        k = int(np.searchsorted(costs, room, side="right"))
        if k == len(pool):
            raise ConfigError(f"the {len(pool)} demonstrations of {cfg.data} ({int(costs[-1])} tokens) cannot fill "
                              f"{length} tokens; use a shorter length, fewer test queries or more data", "lengths")
        while k > 0 and any(len(prefix) + len(ids) + tail_cost(m) > length
                            for _, _, m, ids in _blocks(cfg, k, pool, labels, pieces)):
            k -= 1  # reordering or remapped labels can cost a few tokens more
        if k == 0:
            raise ConfigError(f"{length} tokens hold no demonstration besides the query", "lengths")
        budgets.append((length, k))
    out: list[_Query] = []
    for length, k in budgets:
        for arrangement, p, mapping, ids in _blocks(cfg, k, pool, labels, pieces):
            block = tuple(prefix + ids)
            shown = tuple(mapping[c] for c in labels)
            for qi, (e, (piece, qids)) in enumerate(zip(test, queries)):
                prompt = block + tuple(qids)
                cands = tuple(pieces.label(piece, s) for s in shown)
                ctx.check_length(len(prompt) + max(len(c) for c in cands), "prompt",
                                 "lengths" if length is not None else "shots")
                budget = f"L{length}" if length is not None else f"k{k}"
                out.append(_Query(f"{budget}-{arrangement}-p{p}-q{qi}", length, k, arrangement, p, qi, prompt,
                                  cands, shown, labels, labels.index(e.label), len(block), e.text))
    return Generated(out, {"pool": len(pool), "test": len(test), "classes": len(labels),
                           "test_class_counts": class_counts(test, labels),
                           "shots": {str(length if length is not None else k): k for length, k in budgets}})


def _requests(cfg: IclConfig, q: _Query, ctx) -> list:
    if cfg.mode == "choice":
        return [Choice(q.prompt, q.candidates)]
    return [Generate(q.prompt, max(len(c) for c in q.candidates) + 2, "\n")]


def _score(cfg: IclConfig, q: _Query, outputs: list, ctx) -> dict:
    row: dict[str, Any] = {"id": q.id, "length": q.length, "shots": q.shots, "arrangement": q.arrangement,
                           "permutation": q.permutation, "query": q.query, "n_tokens": [len(q.prompt)],
                           "block_tokens": q.block_tokens, "text": q.text, "label": q.labels[q.gold],
                           "expected": q.shown[q.gold]}
    if cfg.mode == "generate":
        pred = ctx.tokenizer.decode(list(outputs[0])).split("\n")[0].strip()
        return {**row, "prediction": [pred], "score": float(pred == q.shown[q.gold])}
    scores = outputs[0]
    value = [s.logprob if cfg.score_by == "sum" else s.mean_logprob for s in scores]
    best = int(np.argmax(value))  # ties: the first label
    rank = 1 + sum(v > value[q.gold] for v in value)
    gold, top = scores[q.gold], scores[best]
    return {**row, "prediction": [q.shown[best]], "score": float(best == q.gold), "gold_rank": int(rank),
            "gold_logprob": round(gold.logprob, 6), "gold_mean_logprob": round(gold.mean_logprob, 6),
            "pred_logprob": round(top.logprob, 6), "pred_mean_logprob": round(top.mean_logprob, 6)}


# --- aggregation ------------------------------------------------------------------------------


def _budget(r: dict) -> str:
    return f"length={r['length']}" if r["length"] is not None else f"shots={r['shots']}"


def _aggregate(cfg: IclConfig, records: list[dict], models: list[dict], extra: dict):
    cells: list[dict] = []
    metrics: dict[str, dict] = {}
    for m in models:
        label = m["label"]
        mine = [r for r in records if r["model"] == label]
        out: dict[str, Any] = {}
        groups: dict[tuple, list[dict]] = {}
        for r in mine:
            groups.setdefault((r["length"], r["shots"], r["arrangement"], r["permutation"]), []).append(r)
        budgets = list(dict.fromkeys((r["length"], r["shots"]) for r in mine))
        for length, shots in budgets:
            pooled = [r for r in mine if (r["length"], r["shots"]) == (length, shots)]
            key = _budget(pooled[0])
            k = sum(r["score"] for r in pooled)
            out[f"accuracy@{key}"] = metric(k / len(pooled), len(pooled), True, wilson(k, len(pooled)), shots=shots)
            for arrangement in cfg.arrangements:
                accs = []
                for p in range(cfg.permutations):
                    rows = groups[(length, shots, arrangement, p)]
                    hits = sum(r["score"] for r in rows)
                    accs.append(hits / len(rows))
                    cells.append({"model": label, "kind": "permutation", "length": length, "shots": shots,
                                  "arrangement": arrangement, "permutation": p, "n": len(rows),
                                  "accuracy": round(accs[-1], 6), "ci95": [round(x, 6) for x in wilson(hits, len(rows))],
                                  "block_tokens": rows[0]["block_tokens"]})
                n = len(accs) * len(groups[(length, shots, arrangement, 0)])
                mean = float(np.mean(accs))
                std = float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0
                margin = max(accs) - min(accs)
                cells.append({"model": label, "kind": "arrangement", "length": length, "shots": shots,
                              "arrangement": arrangement, "permutation": None, "n": n, "accuracy": round(mean, 6),
                              "ci95": [round(x, 6) for x in wilson(mean * n, n)], "std": round(std, 6),
                              "margin": round(margin, 6), "best": round(max(accs), 6), "worst": round(min(accs), 6),
                              "permutations": len(accs)})
                tag = f"{key},arrangement={arrangement}"
                out[f"accuracy@{tag}"] = metric(mean, n, True, wilson(mean * n, n))
                out[f"std@{tag}"] = metric(std, len(accs), False)
                out[f"margin@{tag}"] = metric(margin, len(accs), False)
        last = [r for r in mine if (r["length"], r["shots"]) == budgets[-1]]
        hits = sum(r["score"] for r in last)
        out["accuracy"] = metric(hits / len(last), len(last), True, wilson(hits, len(last)), at=_budget(last[0]))
        metrics[label] = out
    return cells, metrics


def _curve(results: dict, run):
    from diffeval.plotting.icl import icl_curve_figure

    return icl_curve_figure(results)


def _order(results: dict, run):
    from diffeval.plotting.icl import icl_order_figure

    return icl_order_figure(results)


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
    views=(Figure("icl_curve", _curve, stem="icl_curve"), Figure("icl_order", _order, stem="icl_order"),
           Table("icl_table", accuracy_table)),
    description="many-shot in-context classification and order robustness",
    summary="Many-shot in-context classification (DIFF paper 3.5): accuracy vs demonstrations, and\n"
            "the spread over orderings of the same demonstrations.",
    examples=("diffeval icl --shots 1,4,16 --test 30",
              "diffeval icl --ckpt path/to/model --data synthetic-77 --len 4k,16k"),
    method="choice: the label with the highest log-likelihood after the prompt (score_by: sum or "
           "per-token mean over the label's tokens) among all labels; generate: greedy, exact match of "
           "the first line. Accuracy per (budget, arrangement, permutation) with a Wilson interval; "
           "per arrangement the mean over permutations, their std (ddof 1) and best - worst margin")
