"""`diffeval halluc`: contextual hallucination, judge-free by default."""

from __future__ import annotations

from typing import Optional

import typer

from diffeval.commands import options as o

FLAGS = {"data": "--data", "lengths": "--len", "samples": "--samples", "n_facts": "--facts", "haystack": "--haystack",
         "abstain": "--abstain", "max_new_tokens": "--max-new-tokens", "judge_url": "--judge-url",
         "judge_model": "--judge-model", "judge_timeout": "--judge-timeout", "seed": "--seed"}


@o.with_run_options("device", "dtype", "backend", "batch_size",
                    "prompt_format", "save_prompts", "allow_beyond", "allow_pickle", "weights_format")
def halluc(
    ckpt: list[str] = o.CKPT,
    data: str = typer.Option("synthetic", "--data", help="synthetic (generated long-context QA) or a .jsonl file (context, question, answers, answerable)."),
    length: Optional[str] = o.LENGTHS,
    samples: int = typer.Option(10, "--samples", help="Synthetic contexts per length (3 questions each)."),
    facts: int = typer.Option(6, "--facts", help="Facts in a synthetic context."),
    haystack: str = typer.Option("essay", "--haystack", help="noise, essay, or a text file / folder."),
    abstain: str = typer.Option("unknown", "--abstain", help="The answer expected when the text does not say."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="New tokens per answer (summaries: 4x)."),
    judge_url: Optional[str] = typer.Option(None, "--judge-url", help="OpenAI-compatible API base URL of a judge (optional)."),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="The judge's model name. Key: $DIFFEVAL_JUDGE_API_KEY."),
    judge_timeout: float = typer.Option(60.0, "--judge-timeout", help="Seconds per judge request."),
    seed: int = o.SEED,
    out: Optional[str] = o.OUT,
    opts=None,
) -> None:
    """Contextual hallucination (DIFF paper 3.6): answerable, confusable and unanswerable
    questions over long contexts, or your QA / summaries; judge-free labels, optional judge."""
    params = dict(data=data, lengths=length if length is not None else o.default_lengths(ckpt, "halluc"), samples=samples,
                  n_facts=facts, haystack=haystack, abstain=abstain, max_new_tokens=max_new_tokens,
                  judge_url=judge_url, judge_model=judge_model, judge_timeout=judge_timeout, seed=seed)
    o.run_command("halluc", params, ckpt, out, opts, FLAGS)
