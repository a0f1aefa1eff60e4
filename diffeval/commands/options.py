"""Option groups shared by the probe commands, declared once, and the one path every probe
command takes: options -> probe config -> run_probe -> tables. Errors about a config field
are shown with the command's flag for that field."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import typer

from diffeval.errors import DiffevalError, Interrupted, UsageError

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16", "float64": "float64"}
BACKENDS = ("auto", "reference", "sdpa", "triton")

CKPT = typer.Option([], "--ckpt", help="Checkpoint (repeatable): zoo:NAME, a native or a Hugging Face directory. Default: the zoo models.")
OUT = typer.Option(None, "--out", help="Output directory (default runs/<probe>-<UTC time>). Rerun the same command to resume.")
DEVICE = typer.Option("auto", "--device", help="auto, cpu or cuda[:N].")
DTYPE = typer.Option("auto", "--dtype", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16, float64.")
BACKEND = typer.Option("auto", "--backend", help="auto, reference, sdpa or triton (CUDA).")
SEED = typer.Option(0, "--seed", help="Seed of the sample generator.")
BATCH = typer.Option(1, "--batch-size", help="Prompts of equal length decoded together.")
MAX_NEW = typer.Option(None, "--max-new-tokens", help="Generation budget (default: enough for the longest answer; 128 with --decode ruler).")
PROMPT_FORMAT = typer.Option("plain", "--prompt-format", help="plain, or chat (the checkpoint's own chat template).")
DECODE = typer.Option("default", "--decode", help="default (stop at a newline, score the first line) or ruler (up to 128 tokens, no newline stop, match anywhere).")
SAVE_PROMPTS = typer.Option(False, "--save-prompts", help="Also write prompts.jsonl: the text of every prompt, to audit any cell.")
ALLOW_BEYOND = typer.Option(False, "--allow-beyond-max-positions", help="Allow prompts longer than the model's position limit (length extrapolation).")
ALLOW_PICKLE = typer.Option(False, "--allow-pickle", help="Load .bin/.pt weights (weights_only=True).")
ALLOW_MEMORY = typer.Option(False, "--allow-beyond-memory", help="Load a model whose estimated size (parameters x dtype + KV cache at the longest length) exceeds the device's memory.")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace the results of another run (another probe, parameters, settings or models) found in --out.")
LENGTHS = typer.Option(None, "--len", help="Prompt lengths in tokens: 4096, 4k, 64K (k = 1024), lists 4k,8k, ranges 4k:64k (doubling) or 1k:4k:1k (start:stop:step). Default: 4k, or the longest that fits every model's position limit (said on stderr).")
DEPTHS = typer.Option("0,25,50,75,100", "--depths", help="Needle depths in % of the context: a list 0,25,50, or start:stop:count — the third number is a COUNT, not a step: 0:100:5 = 0, 25, 50, 75, 100.")
FORMAT = typer.Option(None, "--format", help="Weight layout: native, hf, or unilm (DIFF V1 from Microsoft's reference code). Default: detected from config.json and the tensor names.")
HAYSTACK = typer.Option("noise", "--haystack", help="noise, essay, or a text file / folder.")
NEEDLE_KIND = typer.Option("city", "--needle-kind", help="city, kv-word, kv-number or uuid.")

# Flags of the run options, by RunOptions field.
RUN_FLAGS = {"batch_size": "--batch-size", "max_new_tokens": "--max-new-tokens", "decode": "--decode",
             "prompt_format": "--prompt-format", "device": "--device", "dtype": "--dtype", "backend": "--backend"}


def parse_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    if name != "cpu" and not name.startswith("cuda"):
        raise UsageError(f"--device {name!r}: choose auto, cpu or cuda[:N]")
    return name


def parse_dtype(name: str, device: str):
    """'auto' -> bfloat16 on CUDA, float32 on the CPU."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if name not in DTYPES:
        raise UsageError(f"--dtype {name!r}: choose auto, float32, bfloat16, float16 or float64")
    return getattr(torch, DTYPES[name])


# The run options a command may take, by RunOptions-builder argument name: (type, option).
RUN_PARAMS = {
    "device": (str, DEVICE), "dtype": (str, DTYPE), "backend": (str, BACKEND), "batch_size": (int, BATCH),
    "max_new_tokens": (Optional[int], MAX_NEW), "prompt_format": (str, PROMPT_FORMAT), "decode": (str, DECODE),
    "save_prompts": (bool, SAVE_PROMPTS), "allow_beyond": (bool, ALLOW_BEYOND), "allow_pickle": (bool, ALLOW_PICKLE),
    "allow_memory": (bool, ALLOW_MEMORY), "overwrite": (bool, OVERWRITE),
    "weights_format": (Optional[str], FORMAT),
}


def with_run_options(*names: str):
    """Give a command the shared run options `names` (declared once, in RUN_PARAMS); the
    command receives them built into one `opts` (RunOptions) argument instead."""
    import functools
    import inspect

    def wrap(fn):
        sig = inspect.signature(fn)
        own = [p for p in sig.parameters.values() if p.name != "opts"]
        extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=RUN_PARAMS[n][1],
                                   annotation=RUN_PARAMS[n][0]) for n in names]

        @functools.wraps(fn)
        def command(**kwargs):
            opts = run_options(**{n: kwargs.pop(n) for n in names})
            return fn(**kwargs, opts=opts)

        command.__signature__ = sig.replace(parameters=own + extra)
        command.__annotations__ = {k: v for k, v in fn.__annotations__.items() if k != "opts"}
        command.__annotations__.update({n: RUN_PARAMS[n][0] for n in names})
        return command

    return wrap


def run_options(device: str = "auto", dtype: str = "auto", backend: str = "auto", batch_size: int = 1,
                max_new_tokens: Optional[int] = None, allow_beyond: bool = False, allow_pickle: bool = False,
                prompt_format: str = "plain", decode: str = "default", save_prompts: bool = False,
                allow_memory: bool = False, overwrite: bool = False,
                weights_format: Optional[str] = None):
    from diffeval.run import RunOptions

    dev = parse_device(device)
    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r}: choose {', '.join(BACKENDS)}")
    with flags(RUN_FLAGS):
        return RunOptions(device=dev, dtype=parse_dtype(dtype, dev), backend=backend, batch_size=batch_size,
                          max_new_tokens=max_new_tokens, allow_beyond_max_positions=allow_beyond,
                          allow_pickle=allow_pickle, progress=True, prompt_format=prompt_format, decode=decode,
                          save_prompts=save_prompts, allow_beyond_memory=allow_memory, overwrite=overwrite,
                          weights_format=weights_format)


@contextmanager
def flags(mapping: dict[str, str]):
    """Show errors about a config field with the command's flag for it (`--len: ...`)."""
    try:
        yield
    except DiffevalError as exc:
        flag = mapping.get(exc.field) if exc.field else None
        if flag is None and exc.field:
            flag = RUN_FLAGS.get(exc.field)
        if flag is None:
            raise
        raise exc.located(flag) from None


@contextmanager
def interruptible(out: Path):
    """Ctrl-C inside: Interrupted(out), so that the CLI prints the command that resumes it."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(out) from None


def default_lengths(ckpts: list[str], command: str, reserve: int = 0, cap: int = 4096, grid: bool = False) -> "Chosen":
    """The lengths a command uses without --len (and the line saying so): the longest L <= `cap` that
    fits every model's position limit less `reserve` positions (e.g. BOS) — a multiple of 1024,
    or the limit itself below 1024 — and with `grid`, L/4, L/2 and L (256, 512, 1K on the zoo)."""
    from diffeval.checkpoints import read_config, resolve_spec
    from diffeval.probes.specs import length_label
    from diffeval.run import default_specs

    limit = min(read_config(resolve_spec(s))[1].max_seq_len for s in default_specs(list(ckpts)))
    longest = min(cap, (limit - reserve) // 1024 * 1024 or limit - reserve)
    lengths = sorted({max(1, longest // 4), max(1, longest // 2), longest}) if grid else [longest]
    return Chosen(",".join(str(n) for n in lengths),
                  f"{command}: --len not given: using {', '.join(length_label(n) for n in lengths)} tokens "
                  f"(the longest {length_label(longest)} fits every model's position limit, {limit})")


class Chosen(str):
    """A default value the command chose, with the line that says so (printed with the
    results, so that bad input, found before or after models load, still gets one line)."""

    def __new__(cls, value: str, note: str) -> "Chosen":
        out = super().__new__(cls, value)
        out.note = note
        return out


def say_chosen(params: dict[str, Any]) -> None:
    for value in params.values():
        if isinstance(value, Chosen):
            print(value.note, file=sys.stderr)


def run_command(probe_name: str, params: dict[str, Any], ckpt: list[str], out: Optional[str], opts,
                field_flags: dict[str, str]) -> dict:
    """Build the probe's config from command values, run it, print its tables."""
    from diffeval.dist import is_main
    from diffeval.probes import get_probe
    from diffeval.results import default_out
    from diffeval.run import run_probe

    probe = get_probe(probe_name)
    out_dir = Path(out) if out else default_out(probe_name)
    with flags({**field_flags, **RUN_FLAGS}), interruptible(out_dir):
        cfg = probe.config(params)
        results = run_probe(probe, cfg, list(ckpt), out_dir, opts)
    if is_main():  # under torchrun, rank 0 speaks for the job
        probe.render(results)
        say_chosen(params)
        print(f"results: {out_dir / 'results.json'}", file=sys.stderr)
    return results
