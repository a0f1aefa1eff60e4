"""The run options, declared once (`RUN`), and the one path every probe command takes:
options -> probe config -> run_probe -> tables. A probe's command is generated from its
config's declared options (probes/config.py) plus every run option that applies to it
(`probe_command`). Errors about a config field are shown with the command's flag for it."""

from __future__ import annotations

import inspect
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import typer

from diffeval import terminal
from diffeval.errors import DiffevalError, Interrupted, UsageError

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16", "float64": "float64"}
BACKENDS = ("auto", "reference", "sdpa", "triton")


@dataclass(frozen=True)
class RunOption:
    """A run option: its flag, help, default, the value type the command line passes, and the
    probe feature it needs (probes.base.RUN_FEATURES; None: every probe command takes it)."""

    flag: str
    help: str
    default: Any
    kind: Any
    needs: Optional[str] = None

    def typer_option(self):
        return typer.Option(self.default, self.flag, help=self.help)


RUN: dict[str, RunOption] = {
    "device": RunOption("--device", "auto, cpu or cuda[:N].", "auto", str),
    "dtype": RunOption("--dtype", "auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16, float64.", "auto", str),
    "backend": RunOption("--backend", "auto, reference, sdpa or triton (CUDA).", "auto", str),
    "batch_size": RunOption("--batch-size", "Prompts of equal length decoded together.", 1, int, "batch"),
    "max_new_tokens": RunOption("--max-new-tokens", "Generation budget (default: enough for the longest answer; "
                                "128 with --decode ruler).", None, Optional[int], "decode"),
    "prompt_format": RunOption("--prompt-format", "plain, or chat (the checkpoint's own chat template).", "plain",
                               str, "prompt_format"),
    "decode": RunOption("--decode", "default (stop at a newline, score the first line) or ruler (up to 128 tokens, "
                        "no newline stop, match anywhere).", "default", str, "decode"),
    "bos": RunOption("--bos", "BOS before every prompt: auto (the tokenizer's own rule: tokenizer_config.json "
                     "add_bos_token, else tokenizer.json's post-processor), always, or never. Chat prompts: the "
                     "template's own BOS (auto), one added (always) or a leading one removed (never).", "auto", str),
    "save_prompts": RunOption("--save-prompts", "Also write prompts.jsonl: the text of every prompt, to audit any "
                              "cell.", False, bool),
    "allow_beyond": RunOption("--allow-beyond-max-positions", "Allow prompts longer than the model's position limit "
                              "(length extrapolation).", False, bool),
    "allow_pickle": RunOption("--allow-pickle", "Load .bin/.pt weights (weights_only=True).", False, bool),
    "allow_memory": RunOption("--allow-beyond-memory", "Load a model whose estimated size (parameters x dtype + KV "
                              "cache at the longest length) exceeds the device's memory.", False, bool),
    "overwrite": RunOption("--overwrite", "Replace the results of another run (another probe, parameters, settings "
                           "or models) found in --out.", False, bool),
    "engine": RunOption("--engine", "native (diffeval's model code: its families, kernels and attention analysis) "
                        "or hf (transformers' AutoModelForCausalLM: any causal LM it implements; pip install "
                        "'diffeval[hf]'; text probes only).", "native", str),
    "weights_format": RunOption("--format", "Weight layout: native, hf, unilm (DIFF V1 from Microsoft's reference "
                                "code) or unilm-v2 (DIFF V2 from its V2 reference code). Default: detected from "
                                "config.json and the tensor names.", None, Optional[str]),
}
RUN_PARAMS = {name: (r.kind, r.typer_option()) for name, r in RUN.items()}
# Flags of the run options, by RunOptions field.
RUN_FLAGS = {"batch_size": "--batch-size", "max_new_tokens": "--max-new-tokens", "decode": "--decode",
             "prompt_format": "--prompt-format", "device": "--device", "dtype": "--dtype", "backend": "--backend",
             "bos": "--bos", "engine": "--engine"}
CKPT = typer.Option([], "--ckpt", help="Checkpoint (repeatable): zoo:NAME, a native or a Hugging Face directory. "
                    "Default: the zoo models.")
OUT = typer.Option(None, "--out", help="Output directory (default runs/<probe>-<UTC time>). Rerun the same command "
                   "to resume.")
ALLOW_PICKLE, ALLOW_MEMORY, FORMAT = (RUN[n].typer_option() for n in ("allow_pickle", "allow_memory", "weights_format"))


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


def _parameter(name: str, kind, default) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)


def with_run_options(*names: str):
    """Give a command the shared run options `names` (declared once, in RUN); the command
    receives them built into one `opts` (RunOptions) argument instead."""
    def wrap(fn):
        sig = inspect.signature(fn)
        own = [p for p in sig.parameters.values() if p.name != "opts"]
        extra = [_parameter(n, RUN_PARAMS[n][0], RUN_PARAMS[n][1]) for n in names]

        def command(**kwargs):
            opts = run_options(**{n: kwargs.pop(n) for n in names})
            return fn(**kwargs, opts=opts)

        command.__name__, command.__doc__ = fn.__name__, fn.__doc__
        command.__signature__ = sig.replace(parameters=own + extra)
        command.__annotations__ = {k: v for k, v in fn.__annotations__.items() if k != "opts"}
        command.__annotations__.update({n: RUN_PARAMS[n][0] for n in names})
        return command

    return wrap


def run_options(device: str = "auto", dtype: str = "auto", backend: str = "auto", batch_size: int = 1,
                max_new_tokens: Optional[int] = None, allow_beyond: bool = False, allow_pickle: bool = False,
                prompt_format: str = "plain", decode: str = "default", save_prompts: bool = False,
                allow_memory: bool = False, overwrite: bool = False,
                weights_format: Optional[str] = None, bos: str = "auto", engine: str = "native"):
    from diffeval.run import RunOptions

    dev = parse_device(device)
    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r}: choose {', '.join(BACKENDS)}")
    with flags(RUN_FLAGS):
        return RunOptions(device=dev, dtype=parse_dtype(dtype, dev), backend=backend, batch_size=batch_size,
                          max_new_tokens=max_new_tokens, allow_beyond_max_positions=allow_beyond,
                          allow_pickle=allow_pickle, progress=True, prompt_format=prompt_format, decode=decode,
                          save_prompts=save_prompts, allow_beyond_memory=allow_memory, overwrite=overwrite,
                          weights_format=weights_format, bos=bos, engine=engine)


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


@dataclass(frozen=True)
class Chosen:
    """A default value the command chose, and the line that says so (printed with the
    results, so that bad input, found before or after models load, still gets one line)."""

    value: str
    note: str


def default_lengths(ckpts: list[str], command: str, reserve: int = 0, cap: int = 4096, grid: bool = False) -> Chosen:
    """The lengths a command uses without --len: the longest L <= `cap` that fits every model's
    position limit less `reserve` positions (e.g. BOS) — a multiple of 1024, or the limit
    itself below 1024 — and with `grid`, L/4, L/2 and L (256, 512, 1K on the zoo)."""
    from diffeval.checkpoints import position_limit
    from diffeval.run import default_specs
    from diffeval.specs import length_label

    limit = min(position_limit(s) for s in default_specs(list(ckpts)))
    longest = min(cap, (limit - reserve) // 1024 * 1024 or limit - reserve)
    lengths = sorted({max(1, longest // 4), max(1, longest // 2), longest}) if grid else [longest]
    return Chosen(",".join(str(n) for n in lengths),
                  f"{command}: --len not given: using {', '.join(length_label(n) for n in lengths)} tokens "
                  f"(the longest {length_label(longest)} fits every model's position limit, {limit})")


def field_flags(probe) -> dict[str, str]:
    """Config field -> the command's flag for it."""
    return {o.name: o.flag.split("/")[0] for o in probe.Config.options()}


def _run_names(probe) -> list[str]:
    own = {o.flag.split("/")[0] for o in probe.Config.options() if o.cli}
    return [n for n, r in RUN.items() if (r.needs is None or r.needs in probe.uses) and r.flag not in own]


def probe_command(probe):
    """The command of `probe`: its declared options, --ckpt and --out, and every run option
    that applies to it."""
    options = [o for o in probe.Config.options() if o.cli]
    names = _run_names(probe)
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
              _parameter("ckpt", list[str], CKPT)]
    for o in options:
        kind = o.cli_type if o.cli_default is not None else Optional[o.cli_type]
        params.append(_parameter(o.name, kind, typer.Option(o.cli_default, *o.flag.split(" "), help=o.help)))
    params.append(_parameter("out", Optional[str], OUT))
    params += [_parameter(n, RUN[n].kind, RUN[n].typer_option()) for n in names]

    def command(ctx: typer.Context, **kwargs) -> None:
        ckpt, out = kwargs.pop("ckpt"), kwargs.pop("out")
        opts = run_options(**{n: kwargs.pop(n) for n in names})
        chosen = []
        for o in options:
            md = o.model_default
            if md is not None and kwargs.get(o.name) is None and not (md.unless and kwargs.get(md.unless) not in (None, "")):
                chosen.append(default_lengths(ckpt, probe.name, md.reserve, md.cap, md.grid))
                kwargs[o.name] = chosen[-1].value
        run_command(probe, {k: v for k, v in kwargs.items() if v is not None}, ckpt, out, opts, chosen,
                    terminal.of(ctx).console())

    command.__name__ = probe.name.replace("-", "_")
    command.__doc__ = probe.summary
    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def say_chosen(chosen: list[Chosen]) -> None:
    for c in chosen:
        print(c.note, file=sys.stderr)


def run_command(probe, params: dict[str, Any], ckpt: list[str], out: Optional[str], opts,
                chosen: list[Chosen] = (), console=None) -> dict:
    """Build the probe's config from command values, run it, print its tables."""
    from diffeval.dist import is_main
    from diffeval.report.tables import print_run_tables
    from diffeval.results import default_out
    from diffeval.run import run_probe

    out_dir = Path(out) if out else default_out(probe.name)
    with flags({**field_flags(probe), **RUN_FLAGS}), interruptible(out_dir):
        cfg = probe.config(params)
        results = run_probe(probe, cfg, list(ckpt), out_dir, opts)
    if is_main():  # under torchrun, rank 0 speaks for the job
        print_run_tables(probe, results, console)
        say_chosen(chosen)
        print(f"results: {out_dir / 'results.json'}", file=sys.stderr)
    return results
