"""The command surface. Commands parse options, call one library function, render."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from diffeval.errors import DiffevalError, UsageError

app = typer.Typer(
    name="diffeval",
    help="Long-context evaluation and attention analysis for Transformer, SHA and DIFF checkpoints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16", "float64": "float64"}


def _version(value: bool) -> None:
    if value:
        from diffeval import __version__

        typer.echo(f"diffeval {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Long-context evaluation and attention analysis for Transformer, SHA and DIFF checkpoints."""


def parse_dtype(name: str, device: str):
    """'auto' -> bfloat16 on CUDA, float32 on the CPU."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if name not in DTYPES:
        raise UsageError(f"--dtype {name!r}: choose auto, float32, bfloat16, float16 or float64")
    return getattr(torch, DTYPES[name])


def parse_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    if name != "cpu" and not name.startswith("cuda"):
        raise UsageError(f"--device {name!r}: choose auto, cpu or cuda[:N]")
    return name


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


@app.command()
def info(
    ckpt: str = typer.Option(..., "--ckpt", help="Checkpoint: zoo:NAME, a native or a Hugging Face directory."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Load .bin/.pt weights (weights_only=True)."),
) -> None:
    """Describe a checkpoint: family, sizes, RoPE, tokenizer, file sha256."""
    from diffeval.checkpoints import load

    loaded = load(ckpt, allow_pickle=allow_pickle)
    data = loaded.info.to_dict()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{ckpt}", show_header=False)
    rope = data["rope"]
    rope_text = f"theta={rope['theta']:g}, {rope['type']}" + (
        f" x{rope['factor']:g}" if rope["type"] != "default" else ""
    )
    rows = [
        ("family", data["family"]),
        ("format", f"{data['format']} ({data['architecture']})"),
        ("parameters", f"{data['n_params']:,} ({_human(data['n_params'])})"),
        ("layers", data["n_layers"]),
        ("heads", data["n_heads"] if data["family"] != "diff" else f"{data['n_heads']} differential (2 maps each)"),
        ("kv heads", data["n_kv_heads"]),
        ("head size", f"{data['d_head']}" + (f" (value {data['d_value']})" if data["d_value"] != data["d_head"] else "")),
        ("d_model / d_ff", f"{data['d_model']} / {data['d_ff']}"),
        ("vocab", data["vocab_size"]),
        ("max positions", data["max_seq_len"]),
        ("RoPE", rope_text),
        ("tied head", data["tie_embeddings"]),
        ("dtype", data["dtype"]),
        ("tokenizer", data["tokenizer"]),
        ("files", ", ".join(data["files"])),
        ("sha256", data["sha256"]),
    ]
    for k, v in rows:
        table.add_row(k, str(v))
    Console().print(table)


CKPT_HELP = "Checkpoint (repeatable): zoo:NAME, a native or a Hugging Face directory. Default: the zoo models."


def _run_options(device: str, dtype: str, backend: str, batch_size: int, max_new_tokens: Optional[int],
                 allow_beyond: bool, allow_pickle: bool):
    from diffeval.runner import RunOptions

    dev = parse_device(device)
    if backend not in ("auto", "reference", "sdpa", "triton"):
        raise UsageError(f"--backend {backend!r}: choose auto, reference, sdpa or triton")
    return RunOptions(device=dev, dtype=parse_dtype(dtype, dev), backend=backend, batch_size=batch_size,
                      max_new_tokens=max_new_tokens, allow_beyond_max_positions=allow_beyond,
                      allow_pickle=allow_pickle, progress=True)


@app.command()
def needle(
    ckpt: list[str] = typer.Option([], "--ckpt", help=CKPT_HELP),
    length: Optional[str] = typer.Option(None, "--len", help="Prompt lengths in tokens: 4096, 4k, 64K, lists 4k,8k. Default: 4k, or less when a model's position limit is shorter."),
    depths: str = typer.Option("0,25,50,75,100", "--depths", help="Needle depths in %: a list, or start:stop:count."),
    needles: int = typer.Option(1, "--needles", help="Needles in the context (N)."),
    queries: int = typer.Option(1, "--queries", help="Needles asked for (R <= N)."),
    samples: int = typer.Option(10, "--samples", help="Samples per (length, depth) cell."),
    haystack: str = typer.Option("noise", "--haystack", help="noise, essay, or a text file / folder."),
    needle_kind: str = typer.Option("city", "--needle-kind", help="city, kv-word, kv-number or uuid."),
    seed: int = typer.Option(0, "--seed"),
    out: Optional[str] = typer.Option(None, "--out", help="Output directory (default runs/needle-<UTC time>). Rerun to resume."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16."),
    backend: str = typer.Option("auto", "--backend", help="auto, reference, sdpa or triton (CUDA)."),
    batch_size: int = typer.Option(1, "--batch-size", help="Prompts of equal length decoded together."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Default: enough for the longest answer."),
    allow_beyond: bool = typer.Option(False, "--allow-beyond-max-positions", help="Allow prompts longer than the model's position limit."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Load .bin/.pt weights (weights_only=True)."),
) -> None:
    """Needle / multi-needle retrieval over a depth x length grid; heatmap and results."""
    from diffeval.probes.needle import NeedleConfig, parse_depths

    cfg = NeedleConfig(lengths=_lengths(length, ckpt), depths=tuple(parse_depths(depths)),
                       n_needles=needles, n_queries=queries, samples=samples, haystack=haystack,
                       needle_kind=needle_kind, seed=seed)
    opts = _run_options(device, dtype, backend, batch_size, max_new_tokens, allow_beyond, allow_pickle)
    _needle(cfg, list(ckpt), out, opts)


@app.command("run")
def run_task(
    task_file: str = typer.Argument(..., metavar="TASK.yaml", help="A task preset (see tasks/)."),
    ckpt: list[str] = typer.Option([], "--ckpt", help=CKPT_HELP),
    out: Optional[str] = typer.Option(None, "--out", help="Output directory (default runs/<task>-<UTC time>). Rerun to resume."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Override samples per cell."),
    length: Optional[str] = typer.Option(None, "--len", help="Override lengths."),
    depths: Optional[str] = typer.Option(None, "--depths", help="Override depths."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the seed."),
    device: str = typer.Option("auto", "--device"),
    dtype: str = typer.Option("auto", "--dtype"),
    backend: str = typer.Option("auto", "--backend"),
    batch_size: int = typer.Option(1, "--batch-size"),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens"),
    allow_beyond: bool = typer.Option(False, "--allow-beyond-max-positions"),
    allow_pickle: bool = typer.Option(False, "--allow-pickle"),
) -> None:
    """Run a task preset (YAML); each grid variant writes its own folder under --out."""
    from pathlib import Path

    from diffeval.results import default_out
    from diffeval.tasks import load_task

    task = load_task(task_file)
    overrides = {k: v for k, v in dict(samples=samples, lengths=length, depths=depths, seed=seed).items() if v is not None}
    variants = task.variants(overrides)
    opts = _run_options(device, dtype, backend, batch_size, max_new_tokens, allow_beyond, allow_pickle)
    root = Path(out) if out else default_out(task.name)
    for name, cfg in variants:
        target = root / name if name else root
        if task.probe == "needle":
            _needle(cfg, list(ckpt), str(target), opts)
            continue
        if task.probe == "attn-map":
            from diffeval.attn_run import run_attn_map

            render_allocation_table(run_attn_map(cfg[0], list(ckpt), target, opts, cfg[1]))
        else:
            from diffeval.commands.outliers import render_outliers_tables
            from diffeval.outliers_run import run_outliers

            render_outliers_tables(run_outliers(cfg, list(ckpt), target, opts))
        print(f"results: {target / 'results.json'}", file=sys.stderr)


@app.command("attn-map")
def attn_map(
    ckpt: list[str] = typer.Option([], "--ckpt", help=CKPT_HELP),
    length: Optional[str] = typer.Option(None, "--len", help="Prompt lengths in tokens (4096, 4k, 64K, lists). Default: 4k, or less when a model's position limit is shorter."),
    depths: str = typer.Option("0,25,50,75,100", "--depths", help="Needle depths in %."),
    samples: int = typer.Option(2, "--samples", help="Prompts per (length, depth)."),
    needles: int = typer.Option(1, "--needles", help="Needles in the context (the first is asked)."),
    layers: str = typer.Option("all", "--layers", help="all, or indices like 0,5,-1."),
    heads: str = typer.Option("all", "--heads", help="all, or indices like 0,3 (DIFF: differential heads)."),
    query: str = typer.Option("answer", "--query", help="Query tokens: question, answer (the answer prefix) or last."),
    sink: int = typer.Option(4, "--sink", help="Leading tokens counted as the attention sink."),
    haystack: str = typer.Option("noise", "--haystack", help="noise, essay, or a text file / folder."),
    needle_kind: str = typer.Option("city", "--needle-kind"),
    seed: int = typer.Option(0, "--seed"),
    log_scale: bool = typer.Option(True, "--log-scale/--linear-scale", help="Log y axis in the profile figure."),
    arrays: str = typer.Option("all", "--arrays", help="all: an .npz of captured rows per prompt; figure: only the prompt drawn in the figures."),
    out: Optional[str] = typer.Option(None, "--out", help="Output directory (default runs/attn-map-<UTC time>). Rerun to resume."),
    device: str = typer.Option("auto", "--device"),
    dtype: str = typer.Option("auto", "--dtype"),
    backend: str = typer.Option("auto", "--backend"),
    allow_beyond: bool = typer.Option(False, "--allow-beyond-max-positions"),
    allow_pickle: bool = typer.Option(False, "--allow-pickle"),
) -> None:
    """Where attention goes: mass on the answer, needles, sink, question and noise, per depth,
    layer and head (DIFF: differential, map 1, map 2); arrays and figures."""
    from pathlib import Path

    from diffeval.attn_run import AttnMapOptions, run_attn_map
    from diffeval.probes.attention import QUERY_MODES
    from diffeval.probes.needle import NeedleConfig, parse_depths
    from diffeval.results import default_out

    if query not in QUERY_MODES:
        raise UsageError(f"--query {query!r}: choose {', '.join(QUERY_MODES)}")
    if sink < 0:
        raise UsageError(f"--sink ({sink}) must be >= 0")
    cfg = NeedleConfig(lengths=_lengths(length, ckpt), depths=tuple(parse_depths(depths)),
                       n_needles=needles, n_queries=1, samples=samples, haystack=haystack,
                       needle_kind=needle_kind, seed=seed)
    opts = _run_options(device, dtype, backend, 1, None, allow_beyond, allow_pickle)
    out_dir = Path(out) if out else default_out("attn-map")
    results = run_attn_map(cfg, list(ckpt), out_dir, opts, AttnMapOptions(layers, heads, query, sink, arrays), log_scale)
    render_allocation_table(results)
    print(f"results: {out_dir / 'results.json'}", file=sys.stderr)


def render_allocation_table(results: dict) -> None:
    """The DIFF paper's Table 3 layout: answer-span and noise-context mass by depth per model."""
    from rich.console import Console
    from rich.table import Table

    depths = sorted({float(d) for m in results["metrics"].values() for d in m["by_depth"]})
    table = Table(title="attention allocation by needle depth\n(mean over layers, heads, query tokens; DIFF: differential rows / (1 - λ))")
    table.add_column("model")
    table.add_column("span")
    for d in depths:
        table.add_column(f"{d:g}%", justify="right")
    for m in results["models"]:
        by = results["metrics"][m["label"]]["by_depth"]
        for cat, name in (("answer", "answer"), ("noise", "noise context")):
            table.add_row(f"{m['label']} ({m['family']})" if cat == "answer" else "", name,
                          *[f"{by[f'{d:g}'][cat]:.3f}" for d in depths])
    Console().print(table)


def _lengths(spec: Optional[str], ckpts: list[str]) -> tuple[int, ...]:
    """Parsed --len; without one, 4k, or the largest multiple of 1024 (at least the limit itself
    when below 1024) within every model's position limit."""
    from diffeval.probes.needle import parse_lengths

    if spec is not None:
        return tuple(parse_lengths(spec))
    from diffeval.checkpoints import read_config, resolve_spec
    from diffeval.runner import default_specs

    limit = min(read_config(resolve_spec(s))[1].max_seq_len for s in default_specs(list(ckpts)))
    return (min(4096, limit // 1024 * 1024 or limit),)


def _needle(cfg, specs: list[str], out: Optional[str], opts) -> None:
    from pathlib import Path

    from diffeval.results import default_out
    from diffeval.runner import run_needle

    out_dir = Path(out) if out else default_out("needle")
    results = run_needle(cfg, specs, out_dir, opts)
    render_needle_table(results)
    print(f"results: {out_dir / 'results.json'}", file=sys.stderr)


def render_needle_table(results: dict) -> None:
    """Accuracy by depth (rows) for every model and length (columns), the average row, and
    each model's overall accuracy with its Wilson 95% interval."""
    from rich.console import Console
    from rich.table import Table

    lengths = sorted({c["length"] for c in results["cells"]})
    depths = sorted({c["depth"] for c in results["cells"]})
    cells = {(c["model"], c["length"], c["depth"]): c for c in results["cells"]}
    labels = [m["label"] for m in results["models"]]
    table = Table(title="needle retrieval accuracy by depth")
    table.add_column("depth %", justify="right")
    for label in labels:
        for L in lengths:
            table.add_column(f"{label}\n{_length_label(L)}", justify="right")
    for d in depths:
        table.add_row(f"{d:g}", *[f"{cells[(m, L, d)]['mean']:.2f}" if (m, L, d) in cells else "-"
                                  for m in labels for L in lengths])
    table.add_row("avg", *[f"{results['metrics'][m]['by_length'][str(L)]:.2f}" for m in labels for L in lengths],
                  style="bold")
    Console().print(table)
    for m in results["models"]:
        met = results["metrics"][m["label"]]
        Console().print(f"{m['label']} ({m['family']}): accuracy {met['accuracy']:.3f} "
                        f"[{met['ci95'][0]:.3f}, {met['ci95'][1]:.3f}], all correct {met['all_correct']:.3f}, n={met['n']}")


def _length_label(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


# Commands written as plain functions in diffeval/commands/, registered here.
from diffeval.commands.outliers import outliers  # noqa: E402
from diffeval.commands.train import train as train_cmd, zoo as zoo_cmd  # noqa: E402

app.command("outliers")(outliers)
app.command("train")(train_cmd)
app.command("zoo")(zoo_cmd)


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: bad input -> one line on stderr and exit 2; Ctrl-C -> exit 130."""
    import click

    try:
        rc = app(args=argv, standalone_mode=False)  # typer returns exit codes here (130 on Ctrl-C)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except DiffevalError as exc:
        msg = " ".join(str(exc).split())
        print(f"diffeval: error: {msg}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        rc = 130
    if rc == 130:
        print("diffeval: interrupted; finished work is kept (rerun the same command to resume)", file=sys.stderr)
    if isinstance(rc, int) and rc:
        sys.exit(rc)


if __name__ == "__main__":
    main()
