"""The bad-input corpus: every command fed what an adversarial user would try — malformed
options, absurd sizes, damaged checkpoints, hostile YAML, unwritable outputs, foreign run
folders. Each case must end with exit code 2, exactly one line on stderr that names the
culprit, no traceback, and nothing half-written (no temporary file, no folder created by
the refused run). Cases are data: (id, argv builder, text the line must contain)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from diffeval.checkpoints.zoo import zoo_path
from helpers import run_cli, saved_tiny_models

ROOT = Path(__file__).resolve().parent.parent

# `{ck}`: a tiny native checkpoint, `{out}`: a run folder that does not exist yet, `{t}`:
# the test's own folder (for files the case writes first).
TINY = ["--len", "256", "--depths", "50", "--samples", "1", "--ckpt", "{ck}", "--out", "{out}"]


def _config(ck: Path, **changes) -> None:
    cfg = json.loads((ck / "config.json").read_text())
    for key, value in changes.items():
        if key.startswith("rope_"):
            cfg["rope"][key[5:]] = value
        else:
            cfg[key] = value
    (ck / "config.json").write_text(json.dumps(cfg))


def _bad_ckpt(change, zoo: bool = False):
    """A copy of the tiny checkpoint (or of a zoo model, which has tokenizer files) at {t}/ck,
    damaged by change(path)."""
    def setup(t: Path, ck: str) -> None:
        target = t / "ck"
        shutil.copytree(zoo_path("transformer-tiny") if zoo else ck, target)
        change(target)
    return setup


def _write(name: str, content: str | bytes):
    def setup(t: Path, ck: str) -> None:
        path = t / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return setup


def _nan_weights(target: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(target / "model.safetensors"))
    name = sorted(state)[3]
    state[name][0, 0] = float("nan")
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})


def _foreign_run(t: Path, ck: str) -> None:
    (t / "run").mkdir()
    (t / "run" / "results.json").write_text(json.dumps({"schema_version": 2, "probe": "nll", "task": {"params": {}}}))


def _unwritable(t: Path, ck: str) -> None:
    (t / "ro").mkdir()
    os.chmod(t / "ro", 0o500)


def _unreadable_config(target: Path) -> None:
    os.chmod(target / "config.json", 0o000)


def _unreadable_dir(target: Path) -> None:
    os.chmod(target, 0o000)


def _big_tokenizer(target: Path) -> None:
    """Few tokens, but one id beyond the embedding (259 rows)."""
    tok = {"version": "1.0", "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1, "far": 5000},
                                       "unk_token": "a"},
           "pre_tokenizer": {"type": "Whitespace"}}
    (target / "tokenizer.json").write_text(json.dumps(tok))


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")) + \
    "name: t\nprobe: needle\nversion: 1\nparams: {samples: *i}\n"

# (id, argv, setup or None, text the error line must contain)
CASES = [
    # options: values, ranges and absurd sizes (class 7)
    ("samples-zero", ["needle", "--samples", "0", *TINY[6:]], None, "--samples"),
    ("samples-huge", ["needle", "--samples", "99999999999999999999", "--ckpt", "{ck}", "--out", "{out}"], None, "--samples"),
    ("depths-count-huge", ["needle", "--depths", "0:100:100000000", "--ckpt", "{ck}", "--out", "{out}"], None, "--depths"),
    ("depths-step-read-as-count", ["needle", "--depths", "0:100:0", "--ckpt", "{ck}", "--out", "{out}"], None, "count"),
    ("len-range-huge", ["needle", "--len", "1:100000000:1", "--ckpt", "{ck}", "--out", "{out}"], None, "--len"),
    ("len-garbage", ["needle", "--len", "4q", "--ckpt", "{ck}", "--out", "{out}"], None, "--len"),
    ("len-beyond-limit", ["needle", "--len", "64k", "--depths", "50", "--samples", "1", "--ckpt", "{ck}", "--out", "{out}"], None, "--allow-beyond-max-positions"),
    ("tokens-huge", ["outliers", "--tokens", "99999999999999999999k", "--len", "128", "--ckpt", "{ck}", "--out", "{out}"], None, "--tokens"),
    ("outliers-empty-file", ["outliers", "--tokens", "all", "--len", "128", "--data", "{t}/empty.txt", "--ckpt", "{ck}", "--out", "{out}"], _write("empty.txt", ""), "empty.txt"),
    ("dtype-unknown", ["needle", "--dtype", "fp8", *TINY], None, "--dtype"),
    ("backend-unknown", ["needle", "--backend", "cudnn", *TINY], None, "--backend"),
    ("device-unknown", ["needle", "--device", "tpu", *TINY], None, "--device"),
    ("batch-zero", ["needle", "--batch-size", "0", *TINY], None, "--batch-size"),
    ("value-truncated", ["needle", "--len", "x" * 5000, "--ckpt", "{ck}", "--out", "{out}"], None, "--len"),
    ("icl-shots-garbage", ["icl", "--shots", "1,a", "--ckpt", "{ck}", "--out", "{out}"], None, "--shots"),
    ("nll-docs-zero", ["nll", "--len", "128", "--docs", "0", "--ckpt", "{ck}", "--out", "{out}"], None, "--docs"),
    ("halluc-len-garbage", ["halluc", "--len", "-5", "--ckpt", "{ck}", "--out", "{out}"], None, "--len"),
    ("attn-map-layers-out-of-range", ["attn-map", "--layers", "7", *TINY], None, "--layers"),
    # checkpoints (class 9, 10)
    ("ckpt-missing", ["info", "--ckpt", "{t}/nothing"], None, "nothing"),
    ("ckpt-config-not-utf8", ["info", "--ckpt", "{t}/ck"], _bad_ckpt(lambda p: (p / "config.json").write_bytes(b"\xff\xfe{")), "config.json"),
    ("ckpt-config-unreadable", ["info", "--ckpt", "{t}/ck"], _bad_ckpt(_unreadable_config), "permission"),
    ("ckpt-dir-unreadable", ["info", "--ckpt", "{t}/ck"], _bad_ckpt(_unreadable_dir), "permission"),
    ("ckpt-rope-theta-text", ["info", "--ckpt", "{t}/ck"], _bad_ckpt(lambda p: _config(p, rope_theta="abc")), "theta"),
    ("ckpt-rope-list", ["info", "--ckpt", "{t}/ck"], _bad_ckpt(lambda p: _config(p, rope=[1, 2, 3])), "rope"),
    ("ckpt-rope-theta-inf", ["info", "--ckpt", "{t}/ck"], _bad_ckpt(lambda p: _config(p, rope_theta=float("inf"))), "theta"),
    ("ckpt-layers-absurd", ["info", "--ckpt", "{t}/ck"], _bad_ckpt(lambda p: _config(p, n_layers=1000000000)), "n_layers"),
    ("ckpt-weights-dir", ["info", "--ckpt", "{t}/ck"], _bad_ckpt(lambda p: ((p / "model.safetensors").unlink(), (p / "model.safetensors").mkdir())), "model.safetensors"),
    ("ckpt-nan-weight", ["info", "--ckpt", "{t}/ck"], _bad_ckpt(_nan_weights), "non-finite"),
    ("ckpt-tokenizer-config-list", ["info", "--ckpt", "{t}/ck"], _bad_ckpt(lambda p: (p / "tokenizer_config.json").write_text("[1, 2]"), zoo=True), "tokenizer_config.json"),
    ("ckpt-tokenizer-config-not-utf8", ["info", "--ckpt", "{t}/ck"], _bad_ckpt(lambda p: (p / "tokenizer_config.json").write_bytes(b"\xff\xff"), zoo=True), "tokenizer_config.json"),
    ("ckpt-tokenizer-beyond-vocab", ["info", "--ckpt", "{t}/ck"], _bad_ckpt(_big_tokenizer), "vocab_size"),
    ("ckpt-evil-pickle", ["info", "--ckpt", "{t}/ck", "--allow-pickle"], _bad_ckpt(lambda p: ((p / "model.safetensors").unlink(), (p / "model.pt").write_bytes(b"\x80\x04cos\nsystem\n(S'true'\ntR."))), "model.pt"),
    # output faults (class 6)
    ("out-is-a-file", ["needle", *TINY[:-1], "{t}/file"], _write("file", "x"), "file"),
    ("out-read-only", ["needle", *TINY[:-1], "{t}/ro/run"], _unwritable, "ro"),
    ("out-under-proc", ["needle", *TINY[:-1], "/proc/diffeval-run"], None, "/proc"),
    ("out-foreign-run", ["needle", *TINY[:-1], "{t}/run"], _foreign_run, "--overwrite"),
    # task and recipe files (classes 8, 11)
    ("task-alias-bomb", ["run", "{t}/bomb.yaml", "--ckpt", "{ck}", "--out", "{out}"], _write("bomb.yaml", BOMB), "alias"),
    ("task-sink-text", ["run", "{t}/t.yaml", "--ckpt", "{ck}", "--out", "{out}"], _write("t.yaml", "name: t\nprobe: attn-map\nversion: 1\nparams: {lengths: [256], sink: four}\n"), "sink"),
    ("task-binary", ["run", "{t}/t.yaml", "--out", "{out}"], _write("t.yaml", b"\x00\xff\xfe binary"), "t.yaml"),
    ("task-unknown-probe", ["run", "{t}/t.yaml", "--out", "{out}"], _write("t.yaml", "name: t\nprobe: needles\nversion: 1\n"), "needles"),
    ("recipe-betas-text", ["train", "--recipe", "{t}/r.yaml", "--out", "{out}"], _write("r.yaml", "name: r\nmodel: {family: transformer, d_model: 32, n_layers: 1, n_heads: 2, d_ff: 32}\nbetas: [a, b]\n"), "betas"),
    ("recipe-stages-text", ["train", "--recipe", "{t}/r.yaml", "--out", "{out}"], _write("r.yaml", "name: r\nmodel: {family: transformer, d_model: 32, n_layers: 1, n_heads: 2, d_ff: 32}\nstages: [a, b]\n"), "stage"),
    ("recipe-binary", ["train", "--recipe", "{t}/r.yaml", "--out", "{out}"], _write("r.yaml", b"\x00\x01\xff"), "r.yaml"),
    ("figures-no-runs", ["figures", str(ROOT / "plots" / "paper.yaml"), "--results", "{t}/none", "--out", "{out}"], None, "none"),
    ("compare-not-a-run", ["compare", "{t}", "--out", "{out}"], None, "results.json"),
    ("check-bad-suite", ["check", "{t}/s.yaml"], _write("s.yaml", "name: s\n"), "s.yaml"),
]


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    return saved_tiny_models(tmp_path_factory.mktemp("ckpts"))[0]


def _leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if ".tmp" in p.name]


# Permission cases need a user that permissions bind: root reads and writes everything.
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
NEEDS_PERMISSIONS = {"ckpt-config-unreadable", "ckpt-dir-unreadable", "out-read-only"}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(case, ck, tmp_path, capsys, monkeypatch):
    name, argv, setup, culprit = case
    if AS_ROOT and name in NEEDS_PERMISSIONS:
        pytest.skip("permissions do not bind root")
    monkeypatch.chdir(tmp_path)
    if setup is not None:
        setup(tmp_path, ck)
    before = sorted(str(p) for p in tmp_path.rglob("*")) if not name.endswith("unreadable") else None
    args = [a.replace("{ck}", ck).replace("{out}", str(tmp_path / "out")).replace("{t}", str(tmp_path))
            for a in argv]
    try:
        code = run_cli(args)
    finally:
        for p in (tmp_path, tmp_path / "ck", tmp_path / "ro"):
            if p.exists():
                os.chmod(p, 0o700)
        if (tmp_path / "ck" / "config.json").exists():
            os.chmod(tmp_path / "ck" / "config.json", 0o600)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("diffeval: error:"), err
    assert culprit.lower() in lines[0].lower(), lines[0]
    assert len(lines[0]) < 600
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists(), "a refused run left its folder behind"
    assert not _leftovers(tmp_path)
    if before is not None:
        assert sorted(str(p) for p in tmp_path.rglob("*")) == before
