"""`diffeval icl`: many-shot in-context classification and order robustness."""

from __future__ import annotations

from typing import Optional

import typer

from diffeval.commands import options as o

FLAGS = {"data": "--data", "text_field": "--text-field", "label_field": "--label-field", "lengths": "--len",
         "shots": "--shots", "n_test": "--test", "permutations": "--permutations", "arrangements": "--arrangements",
         "mode": "--mode", "score_by": "--score-by", "template": "--template", "separator": "--separator",
         "seed": "--seed"}


@o.with_run_options("device", "dtype", "backend", "batch_size",
                    "prompt_format", "save_prompts", "allow_beyond", "allow_pickle", "weights_format")
def icl(
    ckpt: list[str] = o.CKPT,
    data: str = typer.Option("synthetic-6", "--data", help="synthetic-6, synthetic-50, synthetic-77, synthetic-150, or a .jsonl / .csv file."),
    text_field: str = typer.Option("text", "--text-field", help="Field (column) holding the input text."),
    label_field: str = typer.Option("label", "--label-field", help="Field (column) holding the label."),
    length: Optional[str] = typer.Option(None, "--len", help="Fill demonstrations up to these prompt lengths (4k,16k). Default: 4k or the models' limit, unless --shots."),
    shots: Optional[str] = typer.Option(None, "--shots", help="Numbers of demonstrations instead of lengths, e.g. 1,10,100."),
    test: int = typer.Option(50, "--test", help="Test queries (balanced over classes)."),
    permutations: int = typer.Option(3, "--permutations", help="Orders of the same demonstrations per arrangement."),
    arrangements: str = typer.Option("random", "--arrangements", help="random, alternating, grouped (a list)."),
    mode: str = typer.Option("choice", "--mode", help="choice (log-likelihood of every label) or generate (greedy, exact match)."),
    score_by: str = typer.Option("sum", "--score-by", help="choice: rank labels by the sum or the per-token mean log-likelihood."),
    remap_labels: bool = typer.Option(False, "--remap-labels", help="Replace label names by random integers per block."),
    template: str = typer.Option("input: {text}\nlabel: {label}", "--template", help="A demonstration, with {text} and {label}."),
    separator: str = typer.Option("\n\n", "--separator", help="Between demonstrations."),
    seed: int = o.SEED,
    out: Optional[str] = o.OUT,
    opts=None,
) -> None:
    """Many-shot in-context classification (DIFF paper 3.5): accuracy vs demonstrations, and
    the spread over orderings of the same demonstrations."""
    if shots is None and length is None:
        length = o.default_lengths(ckpt, "icl")
    params = dict(data=data, text_field=text_field, label_field=label_field, lengths=length, shots=shots,
                  n_test=test, permutations=permutations, arrangements=arrangements, mode=mode, score_by=score_by,
                  remap_labels=remap_labels, template=template.replace("\\n", "\n"),
                  separator=separator.replace("\\n", "\n"), seed=seed)
    o.run_command("icl", params, ckpt, out, opts, FLAGS)
