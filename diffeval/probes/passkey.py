"""`passkey`: passkey retrieval (Mohtashami & Jaggi 2023, the test LongLoRA and most
context-extension papers report): a random number of `digits` digits, said twice in one
sentence, hidden at each depth of filler text after an instruction; the model is asked for
it. Score: the first number in the answer equals the key (exact). Cells: (model, length,
depth), as the needle grid; the samples of one (length, index) share their prefix."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from diffeval.errors import UsageError
from diffeval.probes import retrieval as R
from diffeval.probes.assembly import Assembler, first_clean, make_item, question_suffix
from diffeval.probes.base import Figure, Probe, Table, TableData
from diffeval.probes.config import ModelDefault, ProbeConfig, option
from diffeval.probes.haystack import load_haystack
from diffeval.requests import Generate, ids_sha256
from diffeval.specs import check_int

VERSION = 2  # 2: BOS by the tokenizer's rule, chat prompts as apply_chat_template
_TASK_KEY = int.from_bytes(b"passkey", "big")
INSTRUCTION = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
               "I will quiz you about the important information there.\n")
KEY_SENTENCE = "The pass key is {value}. Remember it. {value} is the pass key."
QUESTION, ANSWER = "What is the pass key?", "The pass key is"


@dataclass(frozen=True)
class PasskeyConfig(ProbeConfig):
    PROBE = "passkey"
    lengths: tuple[int, ...] = R.lengths_option(ModelDefault(grid=True, reserve=R.ANSWER_RESERVE))
    depths: tuple[float, ...] = R.depths_option()
    samples: int = option(10, help="Samples per (length, depth) cell.")
    digits: int = option(5, help="Digits of the pass key.")
    haystack: str = R.haystack_option()
    seed: int = R.seed_option()

    def __post_init__(self) -> None:
        grid = R.NeedleGrid(self.lengths, self.depths, samples=self.samples, haystack=self.haystack, seed=self.seed)
        object.__setattr__(self, "lengths", grid.lengths)  # validated and normalised by the grid
        object.__setattr__(self, "depths", grid.depths)
        check_int("digits", self.digits, 1, 18)


@dataclass(frozen=True)
class Sample:
    id: str
    length: int
    depth: float
    index: int
    prompt: tuple[int, ...]
    key: str
    key_span: tuple[int, int]  # token span of the key sentence

    def to_record(self) -> dict:
        return {"id": self.id, "length": self.length, "depth": self.depth, "index": self.index,
                "n_tokens": [len(self.prompt)], "expected": [self.key], "key_span": list(self.key_span),
                "prompt_sha256": [ids_sha256(self.prompt)]}


def _key_twice(context: str, items, suffixes) -> bool:
    """The key occurs exactly twice (both inside its sentence), and not in the question."""
    return context.count(items[0].value) == 2 and not any(items[0].value in s for s in suffixes)


def _generate(cfg: PasskeyConfig, ctx) -> list[Sample]:
    tok = ctx.need_tokenizer("passkey")
    fmt = ctx.prompt_format
    asm = Assembler(tok, fmt.prefix_ids(tok) + list(tok.encode(INSTRUCTION)))
    hay, suffix, depths = load_haystack(cfg.haystack), question_suffix(QUESTION, ANSWER, fmt), sorted(cfg.depths)
    out = []
    for length in sorted(cfg.lengths):
        ctx.check_length(length + cfg.digits + 4, "prompt with its answer")
        for index in range(cfg.samples):
            ss_key, ss_hay, ss_place = np.random.SeedSequence([cfg.seed, _TASK_KEY, length, index]).spawn(3)
            rng = np.random.Generator(np.random.PCG64(ss_key))

            def draw():
                key = str(int(rng.integers(10 ** (cfg.digits - 1), 10 ** cfg.digits)))
                item = make_item(KEY_SENTENCE, "pass key", key)
                built = asm.contexts(hay, [item], [suffix], length, depths, ss_hay, ss_place, check=_key_twice,
                                     what="pass key sentence")
                return None if built is None else (item, built)

            got = first_clean(draw)
            if got is None:
                raise UsageError(f"haystack {hay.source!r}: every drawn pass key also occurs in the text")
            item, built = got
            for depth, b in zip(depths, built):
                span = asm.spans(b, [item])[0][0]
                out.append(Sample(f"L{length}-d{depth:g}-s{index}", length, depth, index, b.ids, item.value,
                                  (int(span[0]), int(span[1]))))
    return out


def _requests(cfg: PasskeyConfig, s: Sample, ctx) -> list:
    return [Generate(s.prompt, cfg.digits + 4, None if ctx.decode == "ruler" else "\n")]


def _score(cfg: PasskeyConfig, s: Sample, outputs: list, ctx) -> dict:
    answer = ctx.tokenizer.decode(list(outputs[0])).strip()
    found = re.search(r"\d+", answer)
    ok = found is not None and found.group() == s.key
    return {**s.to_record(), "prediction": [answer], "score": float(ok), "all_correct": ok}


def _table(results: dict) -> TableData:
    p = results["task"]["params"]
    return R.depth_table(results, f"pass key retrieval by depth ({p['digits']} digits, haystack {p['haystack']}, "
                                  f"{p['samples']} samples per cell)")


def _heatmap(results: dict, run):
    from diffeval.plotting.needle import needle_figure

    return needle_figure(results["cells"], [m["label"] for m in results["models"]], title="pass key retrieval")


PROBE = Probe(
    name="passkey", version=VERSION, Config=PasskeyConfig, generate=_generate, requests=_requests, score=_score,
    aggregate=R.grid_aggregate, cell_keys=("length", "depth"), grid_params=("lengths", "depths", "samples"),
    data=lambda cfg: R.haystack_data(cfg.haystack), group=lambda s: f"{s.length}/{s.index}",
    views=(Figure("passkey_heatmap", _heatmap, stem="passkey_heatmap"), Table("passkey_depths", _table)),
    quick={"lengths": [400], "depths": [0, 100], "samples": 2},
    description="pass key retrieval over a depth x length grid",
    summary="Pass key retrieval (Landmark attention, LongLoRA): a number hidden in filler text, asked for\n"
            "at the end; exact match of the first number in the answer, per (length, depth).",
    examples=("diffeval passkey --depths 0,50,100 --samples 4", "diffeval passkey --ckpt path/to/model --len 4k:32k"),
    method="greedy answer; score 1 when the first number in it equals the pass key; cells: mean, n, Wilson "
           "95% interval; averages: unweighted over cells")
