"""Classification data for the `icl` probe: a user's .jsonl / .csv file, or a built-in
synthetic task; and the seeded split into a demonstration pool and a balanced test set.

Synthetic tasks (6, 50, 77 or 150 classes) are generated from the project's own word lists:
each class has a label word and two cue phrases ("the patient gardener"); an input is a
short sentence about one of its class's cues doing something somewhere, so that the mapping
from cue to label can only be learnt from the demonstrations."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from diffeval.errors import ConfigError, shown
from diffeval.probes.base import metric
from diffeval.probes.prompts import PieceEncoder
from diffeval.stats import wilson
from diffeval.textdata import jsonl_rows

_BLOCK_KEY = int.from_bytes(b"icl", "big")  # the probe's share of the block seeds
REMAP_RANGE = 1000  # remapped labels are distinct integers below this

SYNTHETIC = {"synthetic-6": 6, "synthetic-50": 50, "synthetic-77": 77, "synthetic-150": 150}
_TASK_KEY = int.from_bytes(b"icl-data", "big")
SYNTHETIC_EXAMPLES = 6000  # about this many synthetic examples per task: enough demonstrations for 64K
MIN_PER_CLASS = 40


def distinct_candidates(cands: tuple, labels: tuple[str, ...]) -> tuple:
    """The labels' token ids, refused when two labels tokenize identically (two CJK labels
    both <unk>): every prediction would be the first of them."""
    seen: dict[tuple, str] = {}
    for ids, label in zip(cands, labels):
        if tuple(ids) in seen:
            raise ConfigError(f"labels {shown(seen[tuple(ids)])} and {shown(label)} are the same tokens "
                              f"{list(ids)[:8]} under this tokenizer: they cannot be told apart", "label_field")
        seen[tuple(ids)] = label
    return cands


def check_template(template: str) -> None:
    """A demonstration template holds exactly {text} once, then {label} once, and no other
    replacement field (write a literal brace as {{ or }})."""
    import string

    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ConfigError(f"{shown(template)}: {exc} (write a literal brace as {{{{ or }}}})", "template") from None
    if [f for f in fields] != [("text", "", None), ("label", "", None)]:
        other = [f"{{{n}}}" for n, _, _ in fields if n not in ("text", "label")]
        why = f"; {', '.join(other)} is not a field (write a literal brace as {{{{ or }}}})" if other else ""
        raise ConfigError(f"{shown(template)} must hold {{text}} once, then {{label}} once{why}", "template")


@dataclass(frozen=True)
class Example:
    text: str
    label: str


@dataclass(frozen=True)
class Dataset:
    source: str
    examples: tuple[Example, ...]
    labels: tuple[str, ...]  # distinct labels in order of first appearance


def _label_words() -> list[str]:
    from diffeval.probes.words import KEY_ADJECTIVES, KEY_NOUNS, VALUE_WORDS

    return list(dict.fromkeys([*VALUE_WORDS, *KEY_NOUNS, *KEY_ADJECTIVES]))


def synthetic_task(name: str, seed: int = 0, per_class: Optional[int] = None) -> Dataset:
    """The built-in task `name` (synthetic-6/50/77/150): per_class examples of each class
    (default: max(40, 6000 // classes), enough demonstrations to fill 64K tokens)."""
    from diffeval.probes.haystack import ESSAY_WORDS

    n = SYNTHETIC[name]
    per_class = per_class or max(MIN_PER_CLASS, SYNTHETIC_EXAMPLES // n)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _TASK_KEY, n])))
    words = _label_words()
    labels = [words[i] for i in rng.choice(len(words), size=n, replace=False)]
    adjs, people = ESSAY_WORDS["person_adjectives"], ESSAY_WORDS["people"]
    cues = rng.choice(len(adjs) * len(people), size=2 * n, replace=False)
    cue_text = [f"the {adjs[c // len(people)]} {people[c % len(people)]}" for c in cues]
    verbs, things, places = ESSAY_WORDS["verbs"], ESSAY_WORDS["things"], ESSAY_WORDS["places"]
    examples = []
    for k in range(n):
        for _ in range(per_class):
            who = cue_text[2 * k + int(rng.integers(2))]
            text = (f"{who[0].upper()}{who[1:]} {verbs[int(rng.integers(len(verbs)))][0]} "
                    f"the {things[int(rng.integers(len(things)))]} {places[int(rng.integers(len(places)))]}.")
            examples.append(Example(text, labels[k]))
    return Dataset(name, tuple(examples), tuple(labels))


def load_examples(path: Path, text_field: str, label_field: str) -> Dataset:
    """Examples of a .jsonl (one object a line) or .csv (a header row) file; errors name the
    file, line and field."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{str(path)!r}: no such file (give synthetic-6/50/77/150 or a .jsonl / .csv file)", "data")
    rows: list[tuple[int, dict]] = []
    if path.suffix == ".jsonl":
        rows = list(enumerate(jsonl_rows(path, "data"), start=1))
    elif path.suffix == ".csv":
        try:
            with open(path, encoding="utf-8", newline="") as f:
                rows = [(n, row) for n, row in enumerate(csv.DictReader(f), start=2)]
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ConfigError(f"file {path}: not a readable UTF-8 CSV ({exc})", "data") from None
    else:
        raise ConfigError(f"file {path}: expected a .jsonl or .csv file", "data")
    examples = []
    for n, row in rows:
        for field, option in ((text_field, "text_field"), (label_field, "label_field")):
            if row.get(field) is None or isinstance(row.get(field), (dict, list)) or not str(row[field]).strip():
                what = "no" if row.get(field) in (None, "") else f"a blank or non-text ({shown(row.get(field))})"
                raise ConfigError(f"file {path} line {n}: {what} {field!r} value "
                                  f"(has {', '.join(sorted(k for k in row if k)) or 'nothing'})", option)
        examples.append(Example(str(row[text_field]).strip(), str(row[label_field]).strip()))
    labels = tuple(dict.fromkeys(e.label for e in examples))
    if len(labels) < 2:
        raise ConfigError(f"file {path}: {len(examples)} examples but {len(labels)} class; "
                          "classification needs at least two", "data")
    return Dataset(str(path), tuple(examples), labels)


def load_dataset(data: str, text_field: str, label_field: str, seed: int) -> Dataset:
    if data in SYNTHETIC:
        return synthetic_task(data, seed)
    if data.startswith("synthetic"):
        raise ConfigError(f"{data!r}: the synthetic tasks are {', '.join(SYNTHETIC)}", "data")
    return load_examples(Path(data), text_field, label_field)


def split(ds: Dataset, n_test: int, seed: int, need_pool: int = 1) -> tuple[list[Example], list[Example]]:
    """(demonstration pool, test set). Test queries are taken class by class in turn (a seeded
    class order, a seeded order within each class), so class counts in the test set differ by
    at most one where every class has enough examples; the pool is everything else."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _TASK_KEY, 1])))
    by_class: dict[str, list[int]] = {}
    for i, e in enumerate(ds.examples):
        by_class.setdefault(e.label, []).append(i)
    order = [ds.labels[i] for i in rng.permutation(len(ds.labels))]
    queues = {c: [by_class[c][j] for j in rng.permutation(len(by_class[c]))] for c in order}
    test: list[int] = []
    while len(test) < n_test and any(len(q) > 1 for q in queues.values()):
        for c in order:  # keep at least one example of each class for the pool
            if len(test) < n_test and len(queues[c]) > 1:
                test.append(queues[c].pop())
    if len(test) < n_test:
        raise ConfigError(f"{ds.source} has {len(ds.examples)} examples: {len(test)} test queries at most "
                          f"(one of each class stays for demonstrations), fewer than the {n_test} asked", "n_test")
    taken = set(test)
    pool_idx = [i for c in order for i in queues[c] if i not in taken]
    pool_idx = [pool_idx[j] for j in rng.permutation(len(pool_idx))]
    if len(pool_idx) < need_pool:
        raise ConfigError(f"{ds.source}: {len(pool_idx)} examples left for demonstrations, fewer than the "
                          f"{need_pool} asked", "shots")
    return [ds.examples[i] for i in pool_idx], [ds.examples[i] for i in test]


def class_rounds(pool: list[Example]) -> list[Example]:
    """The pool in class rounds: one example of each class (classes in the order they first
    occur in the seeded pool, examples in pool order), then the next round, a class that runs
    out left out of later rounds. Its first k examples cover min(k, classes) classes with
    counts that differ by at most one where every class has enough examples: the class-
    balanced demonstrations of many-shot ICL protocols."""
    queues: dict[str, list[Example]] = {}
    for e in pool:
        queues.setdefault(e.label, []).append(e)
    deepest = max((len(q) for q in queues.values()), default=0)
    return [q[r] for r in range(deepest) for q in queues.values() if r < len(q)]


def coverage(demos: list[Example], test: list[Example], labels: tuple[str, ...]) -> dict[str, Any]:
    """What a block of demonstrations shows: classes shown (of all), per class count
    spread, and the share of test queries whose class is shown."""
    counts = class_counts(demos, labels)
    shown = {c for c, n in counts.items() if n}
    return {"classes_shown": len(shown), "classes": len(labels),
            "per_class": [min(counts.values()), max(counts.values())],
            "queries_covered": round(sum(e.label in shown for e in test) / len(test), 6) if test else None}


def class_counts(examples: list[Example], labels: Optional[tuple[str, ...]] = None) -> dict[str, int]:
    out: dict[str, int] = {c: 0 for c in labels or ()}
    for e in examples:
        out[e.label] = out.get(e.label, 0) + 1
    return out


# --- demonstrations as prompt pieces --------------------------------------------------------


@dataclass(frozen=True)
class Pieces:
    """How examples become token ids under one tokenizer and prompt format."""

    enc: PieceEncoder
    template: str  # a demonstration: {text} then {label}
    separator: str  # between demonstrations
    fmt: Any  # probes.prompts.PromptFormat

    @property
    def before(self) -> str:
        return self.template.split("{label}")[0]

    def demo(self, e: Example, label: str, first: bool) -> tuple[int, ...]:
        text = self.template.format(text=e.text, label=label)
        if first and not self.fmt.head:
            return self.enc.plain(text)
        return self.enc.inner(text if first else self.separator + text)

    def query(self, e: Example) -> tuple[str, tuple[int, ...]]:
        """(context piece, ids): the separator and the template up to the label (its trailing
        spaces go to the label); in chat format the assistant header follows."""
        head = self.before.format(text=e.text)
        piece = self.separator + head.rstrip(" ")
        if self.fmt.name == "chat":
            piece = self.separator + head.rstrip() + self.fmt.tail
        return piece, self.enc.inner(piece)

    def label(self, piece: str, label: str) -> tuple[int, ...]:
        """The ids of a label continuing `piece` (as lm-eval splits context and continuation)."""
        lead = "" if self.fmt.name == "chat" else self.before[len(self.before.rstrip(" ")):]
        base, full = self.enc.inner(piece), self.enc.inner(piece + lead + label)
        if full[: len(base)] == base and len(full) > len(base):
            return full[len(base):]
        return self.enc.inner(lead + label)


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


def _rng(cfg, *parts: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([cfg.seed, _BLOCK_KEY, *parts])))


def _label_map(cfg, labels: tuple[str, ...], block: tuple[int, ...]) -> dict[str, str]:
    if not cfg.remap_labels:
        return {c: c for c in labels}
    ids = _rng(cfg, 7, *block).choice(REMAP_RANGE, size=len(labels), replace=False)
    return {c: str(int(i)) for c, i in zip(labels, ids)}


def blocks(cfg, k: int, pool: list[Example], labels: tuple[str, ...], pieces: "Pieces"):
    """(arrangement, permutation, label map, block ids) of budget k: the first k demonstrations
    of the pool (in class rounds: see class_rounds) in each arrangement and permutation of `cfg` (the probe's config), labels
    remapped per block with `cfg.remap_labels`."""
    for a, arrangement in enumerate(cfg.arrangements):
        for p in range(cfg.permutations):
            key = (k, a, p)
            order = arrange(pool[:k], arrangement, _rng(cfg, *key))
            mapping = _label_map(cfg, labels, key)
            ids = [t for i, e in enumerate(order) for t in pieces.demo(e, mapping[e.label], i == 0)]
            yield arrangement, p, mapping, ids


def fill_budgets(cfg, pool: list[Example], labels: tuple[str, ...], pieces: "Pieces", n_prefix: int,
                 queries: list[tuple[str, tuple[int, ...]]]) -> list[tuple[int, int]]:
    """(length, k) for each of `cfg.lengths`: the most demonstrations k whose every block
    (arrangement, permutation, label map) leaves room for the longest query and label."""
    def tail_cost(mapping) -> int:  # the longest query plus its longest label
        return max(len(q) for _, q in queries) + max(len(pieces.label(queries[0][0], mapping[c])) for c in labels)

    if not cfg.lengths:
        return []
    costs = np.cumsum([len(pieces.demo(e, e.label, i == 0)) for i, e in enumerate(pool)])  # first k demos
    out = []
    for length in cfg.lengths:
        k = int(np.searchsorted(costs, length - n_prefix - tail_cost({c: c for c in labels}), side="right"))
        if k == len(pool):
            raise ConfigError(f"the {len(pool)} demonstrations of {cfg.data} ({int(costs[-1])} tokens) cannot fill "
                              f"{length} tokens; use a shorter length, fewer test queries or more data", "lengths")
        while k > 0 and any(n_prefix + len(ids) + tail_cost(m) > length
                            for _, _, m, ids in blocks(cfg, k, pool, labels, pieces)):
            k -= 1  # reordering or remapped labels can cost a few tokens more
        if k == 0:
            raise ConfigError(f"{length} tokens hold no demonstration besides the query", "lengths")
        out.append((length, k))
    return out


# --- aggregation -------------------------------------------------------------------------------


def order_cells(base: dict, runs: list[list[dict]], out: dict, tag: str) -> list[dict]:
    """Cells of one arrangement, a permutation each, then their mean, std (ddof 1) and
    best - worst margin (also added to `out` as metrics)."""
    cells, accs = [], []
    for p, rows in enumerate(runs):
        hits = sum(r["score"] for r in rows)
        accs.append(hits / len(rows))
        cells.append({**base, "kind": "permutation", "permutation": p, "n": len(rows), "accuracy": round(accs[-1], 6),
                      "ci95": [round(x, 6) for x in wilson(hits, len(rows))], "block_tokens": rows[0]["block_tokens"],
                      "classes_shown": rows[0].get("classes_shown")})
    n, mean = len(accs) * len(runs[0]), float(np.mean(accs))
    std = float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0
    margin = max(accs) - min(accs)
    cells.append({**base, "kind": "arrangement", "permutation": None, "n": n, "accuracy": round(mean, 6),
                  "ci95": [round(x, 6) for x in wilson(mean * n, n)], "std": round(std, 6), "margin": round(margin, 6),
                  "best": round(max(accs), 6), "worst": round(min(accs), 6), "permutations": len(accs)})
    out[f"accuracy@{tag}"] = metric(mean, n, True, wilson(mean * n, n))
    out[f"std@{tag}"] = metric(std, len(accs), False)
    out[f"margin@{tag}"] = metric(margin, len(accs), False)
    return cells
