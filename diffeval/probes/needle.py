"""`needle`: needle / multi-needle retrieval over a depth x length grid (the samples come from
probes/retrieval.py, shared with attn-map and outliers). Each asked needle gets one greedy
answer, scored as RULER's string_match_all; cells are (model, length, depth)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from diffeval.probes import retrieval as R
from diffeval.probes.base import Figure, Probe, Table, TableData
from diffeval.probes.config import ModelDefault, ProbeConfig, option
from diffeval.probes.scoring import answer_text, string_match_all

VERSION = 3  # bump when samples for the same config change (3: BOS by the tokenizer's rule, chat
# prompts as apply_chat_template; 2: RULER kinds ask in the singular)


@dataclass(frozen=True)
class NeedleConfig(ProbeConfig):
    """A needle task: which cells (lengths x depths), how many needles, asked and samples."""

    PROBE = "needle"
    lengths: tuple[int, ...] = R.lengths_option(ModelDefault(grid=True, reserve=R.ANSWER_RESERVE))
    depths: tuple[float, ...] = R.depths_option()
    n_needles: int = option(1, flag="--needles", help="Needles in the context (N).")
    n_queries: int = option(1, flag="--queries", help="Needles asked for (R <= N).")
    samples: int = option(10, help="Samples per (length, depth) cell.")
    haystack: str = R.haystack_option()
    needle_kind: str = R.kind_option()
    seed: int = R.seed_option()

    def __post_init__(self) -> None:
        grid = self.grid()  # validates every field
        object.__setattr__(self, "lengths", grid.lengths)
        object.__setattr__(self, "depths", grid.depths)

    def grid(self) -> R.NeedleGrid:
        return R.NeedleGrid(tuple(self.lengths), tuple(self.depths), self.n_needles, self.n_queries, self.samples,
                            self.haystack, self.needle_kind, self.seed)

    def extra(self) -> dict:
        return {"task": "needle", "version": VERSION}


def _generate(cfg: NeedleConfig, ctx) -> list[R.NeedleSample]:
    return R.run_samples(cfg.grid(), ctx, "needle")


def _score(cfg: NeedleConfig, sample: R.NeedleSample, outputs: list, ctx) -> dict:
    return score_sample(sample, [answer_text(ctx.tokenizer, out, ctx.decode) for out in outputs])


def score_sample(sample: R.NeedleSample, predictions) -> dict:
    """sample.to_record() plus the predictions (one per query), their scores, "score" (the
    mean over queries) and "all_correct"."""
    if isinstance(predictions, str) or len(predictions) != len(sample.queries):
        got = repr(predictions) if isinstance(predictions, str) else f"{len(predictions)}"
        raise ValueError(f"sample {sample.id}: {len(sample.queries)} queries need as many predictions, got {got}")
    scores = [string_match_all([e], p) for e, p in zip(sample.expected, predictions)]
    return {**sample.to_record(), "prediction": list(predictions), "query_scores": scores,
            "score": math.fsum(scores) / len(scores), "all_correct": all(x == 1.0 for x in scores)}


def experiment(p: dict) -> str:
    """The experiment in words, for figure and table titles."""
    return (f"needle: {p['needle_kind']} needles, N={p['n_needles']}, R={p['n_queries']}, haystack "
            f"{p['haystack']}, {p['samples']} samples per cell")


def _depth_table(results: dict) -> TableData:
    return R.depth_table(results, f"retrieval accuracy by depth\n({experiment(results['task']['params'])})")


def multi_needle_table(runs: list[dict]) -> TableData:
    """The multi-needle table: a row per run (N needles, R asked), accuracy per model."""
    labels = list(dict.fromkeys(m["label"] for res in runs for m in res["models"]))
    rows = []
    for res in sorted(runs, key=lambda x: (x["task"]["params"]["n_needles"], x["task"]["params"]["n_queries"])):
        p = res["task"]["params"]
        accs = [res["metrics"].get(label, {}).get("accuracy") for label in labels]
        rows.append([str(p["n_needles"]), str(p["n_queries"]), ",".join(str(n) for n in p["lengths"]),
                     *["-" if a is None else f"{a['value']:.2f}" for a in accs]])
    return TableData("Multi-needle retrieval accuracy (N needles in the context, R asked)",
                     ["N", "R", "length", *labels], rows)


PROBE = Probe(
    name="needle", version=VERSION, Config=NeedleConfig, generate=_generate,
    requests=lambda cfg, sample, ctx: sample.requests(ctx.decode), score=_score, aggregate=R.grid_aggregate,
    cell_keys=("length", "depth"), grid_params=("lengths", "depths", "samples"),
    data=lambda cfg: R.haystack_data(cfg.haystack), group=lambda sample: sample.group,
    views=(Figure("needle_heatmap", "needle:heatmap_view", stem="needle_heatmap"), Table("needle_depths", _depth_table),
           Table("needle_table", multi_needle_table, in_run=False, across_runs=True)),
    quick={"lengths": [200], "depths": [0, 100], "samples": 2, "n_needles": 2, "n_queries": 2},
    description="needle / multi-needle retrieval over a depth x length grid",
    summary="Needle / multi-needle retrieval over a depth x length grid; heatmap and results.",
    examples=("diffeval needle  # the zoo models: 256, 512, 1K tokens x 5 depths, under a minute",
              "diffeval needle --depths 0:100:11 --samples 20  # 11 depths 0, 10, ..., 100",
              "diffeval needle --ckpt path/to/model --len 4k,8k,16k --needles 4 --queries 2"),
    method="greedy answer per asked needle; score = fraction of the expected value found as a "
           "case-insensitive substring (first line; --decode ruler: the whole answer); sample score = "
           "mean over its questions; cells: mean, n, Wilson 95% interval; averages: unweighted over cells")
