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


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: bad input -> one line on stderr and exit 2; Ctrl-C -> exit 130."""
    import click

    try:
        app(args=argv, standalone_mode=False)
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
        print("diffeval: interrupted; finished work is kept", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
