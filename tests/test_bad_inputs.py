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

from helpers import copy_zoo_model, run_cli, saved_tiny_models

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
        if zoo:
            copy_zoo_model("transformer-tiny", target)
        else:
            shutil.copytree(ck, target)
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


def _overflowing_head(target: Path) -> None:
    """Finite weights whose logits overflow float16 (the largest is 65504)."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(target / "model.safetensors"))
    state["lm_head.weight"] = state["lm_head.weight"] / state["lm_head.weight"].abs().max() * 60000
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})


def _foreign_run(t: Path, ck: str) -> None:
    (t / "run").mkdir()
    (t / "run" / "results.json").write_text(json.dumps({"schema_version": 2, "probe": "nll", "task": {"params": {}}}))


HELD: list = []  # lock files a case holds while the command runs


def _locked(t: Path, ck: str) -> None:
    import fcntl

    (t / "run").mkdir()
    f = open(t / "run" / ".lock", "a+")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a concurrent run into the same folder holds it
    f.write("4242\n")
    f.flush()
    HELD.append(f)


def _resume_dir(t: Path, ck: str) -> None:
    (t / "run" / ".resume" / "transformer.jsonl").mkdir(parents=True)


def _bad_state(t: Path, ck: str) -> None:
    (t / "run").mkdir()
    (t / "run" / "train_state.pt").write_bytes(b"PK\x03\x04 cut by a kill")


MICRO_RECIPE = ("name: micro\nmodel: {family: transformer, d_model: 32, n_layers: 1, n_heads: 2, d_ff: 64, "
                "max_seq_len: 128}\nstages: [{steps: 2, seq_len: 64, batch_size: 1}]\nmin_doc: 16\n")


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

def _shard_outside(target: Path) -> None:
    """A shard index that names weights beside (not inside) the checkpoint folder."""
    shutil.move(target / "model.safetensors", target.parent / "stolen.safetensors")
    from safetensors import safe_open

    with safe_open(str(target.parent / "stolen.safetensors"), "pt") as f:
        names = list(f.keys())
    (target / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {n: "../stolen.safetensors" for n in names}}))


def _rows(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


FIXTURE_RUN = Path(__file__).parent / "fixtures" / "runs" / "needle-n1r1"


def _damaged_run(change):
    """A copy of a finished needle run at {t}/run whose results.json (a dict) change() edits;
    change may return bytes to write instead."""
    def setup(t: Path, ck: str) -> None:
        shutil.copytree(FIXTURE_RUN, t / "run")
        results = json.loads((t / "run" / "results.json").read_text())
        new = change(results)
        data = new if isinstance(new, bytes) else json.dumps(results if new is None else new).encode()
        (t / "run" / "results.json").write_bytes(data)
    return setup


def _metric_text(results: dict) -> None:
    label = results["models"][0]["label"]
    next(iter(results["metrics"][label].values()))["value"] = "abc"


CHECK_SUITE = ("name: s\nreference: ref.yaml\nmodels: [zoo:transformer-tiny]\ntasks:\n"
               "  - {name: nll, probe: nll, params: {length: 128, docs: 1}}\n")


def _check_files(reference: str):
    def setup(t: Path, ck: str) -> None:
        _write("s.yaml", CHECK_SUITE)(t, ck)
        _write("ref.yaml", reference)(t, ck)
    return setup


REF = "metrics: {nll: {transformer-tiny: {nll: {value: 2.0, n: 1, higher_is_better: false%s}}}}\n"


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
    ("ckpt-logits-overflow-fp16", ["needle", "--dtype", "float16", "--len", "256", "--depths", "50", "--samples", "1",
                                   "--ckpt", "{t}/ck", "--out", "{out}"], _bad_ckpt(_overflowing_head), "non-finite logits"),
    ("ckpt-hf-fields-of-wrong-type", ["info", "--ckpt", "{t}/ck"],
     _bad_ckpt(lambda p: (p / "config.json").write_text(json.dumps(
         {"architectures": ["LlamaForCausalLM"], "hidden_size": "abc", "num_attention_heads": 4, "vocab_size": 259,
          "num_hidden_layers": 2.5, "intermediate_size": 96}))), "hidden_size ('abc'), num_hidden_layers (2.5)"),
    ("ckpt-native-tokenizer-missing", ["info", "--ckpt", "{t}/ck"], _bad_ckpt(lambda p: (p / "tokenizer.json").unlink(), zoo=True), "tokenizer.json: missing"),
    ("ckpt-tokenizer-config-list", ["info", "--ckpt", "{t}/ck"], _bad_ckpt(lambda p: (p / "tokenizer_config.json").write_text("[1, 2]"), zoo=True), "tokenizer_config.json"),
    ("ckpt-tokenizer-config-not-utf8", ["info", "--ckpt", "{t}/ck"], _bad_ckpt(lambda p: (p / "tokenizer_config.json").write_bytes(b"\xff\xff"), zoo=True), "tokenizer_config.json"),
    ("ckpt-tokenizer-beyond-vocab", ["info", "--ckpt", "{t}/ck"], _bad_ckpt(_big_tokenizer), "vocab_size"),
    ("ckpt-evil-pickle", ["info", "--ckpt", "{t}/ck", "--allow-pickle"], _bad_ckpt(lambda p: ((p / "model.safetensors").unlink(), (p / "model.pt").write_bytes(b"\x80\x04cos\nsystem\n(S'true'\ntR."))), "os.system"),
    # output faults (class 6)
    ("out-is-a-file", ["needle", *TINY[:-1], "{t}/file"], _write("file", "x"), "file"),
    ("out-read-only", ["needle", *TINY[:-1], "{t}/ro/run"], _unwritable, "ro"),
    ("out-under-proc", ["needle", *TINY[:-1], "/proc/diffeval-run"], None, "/proc"),
    ("out-foreign-run", ["needle", *TINY[:-1], "{t}/run"], _foreign_run, "--overwrite"),
    ("out-results-garbage", ["needle", *TINY[:-1], "{t}/run"], _write("run/results.json", "{not json"), "cannot read"),
    ("out-locked-by-another-run", ["needle", *TINY[:-1], "{t}/run"], _locked, "4242"),
    ("out-resume-file-is-a-dir", ["needle", *TINY[:-1], "{t}/run"], _resume_dir, "transformer.jsonl"),
    ("train-state-truncated", ["train", "--recipe", "{t}/r.yaml", "--out", "{t}/run"],
     lambda t, ck: (_write("r.yaml", MICRO_RECIPE)(t, ck), _bad_state(t, ck)), "train_state.pt"),
    ("recipe-model-invalid", ["train", "--recipe", "{t}/r.yaml", "--out", "{out}"],
     _write("r.yaml", MICRO_RECIPE.replace("n_heads: 2", "n_heads: 3")), "d_model"),
    ("recipe-too-large-for-memory", ["train", "--recipe", "{t}/r.yaml", "--out", "{out}"],
     _write("r.yaml", MICRO_RECIPE.replace("d_model: 32", "d_model: 1048576").replace("d_ff: 64", "d_ff: 1048576")), "GiB"),
    ("ckpt-too-large-for-memory", ["info", "--ckpt", "{t}/ck"],
     _bad_ckpt(lambda p: _config(p, vocab_size=1 << 24, d_model=1 << 16, d_ff=64, max_seq_len=64)), "--allow-beyond-memory"),
    # task and recipe files (classes 8, 11)
    ("task-alias-bomb", ["run", "{t}/bomb.yaml", "--ckpt", "{ck}", "--out", "{out}"], _write("bomb.yaml", BOMB), "alias"),
    ("task-sink-text", ["run", "{t}/t.yaml", "--ckpt", "{ck}", "--out", "{out}"], _write("t.yaml", "name: t\nprobe: attn-map\nversion: 1\nparams: {lengths: [256], sink: four}\n"), "sink"),
    ("task-binary", ["run", "{t}/t.yaml", "--out", "{out}"], _write("t.yaml", b"\x00\xff\xfe binary"), "t.yaml"),
    ("task-unknown-probe", ["run", "{t}/t.yaml", "--out", "{out}"], _write("t.yaml", "name: t\nprobe: needles\nversion: 1\n"), "needles"),
    ("recipe-betas-text", ["train", "--recipe", "{t}/r.yaml", "--out", "{out}"], _write("r.yaml", "name: r\nmodel: {family: transformer, d_model: 32, n_layers: 1, n_heads: 2, d_ff: 32}\nbetas: [a, b]\n"), "betas"),
    ("recipe-stages-text", ["train", "--recipe", "{t}/r.yaml", "--out", "{out}"], _write("r.yaml", "name: r\nmodel: {family: transformer, d_model: 32, n_layers: 1, n_heads: 2, d_ff: 32}\nstages: [a, b]\n"), "stage"),
    ("recipe-binary", ["train", "--recipe", "{t}/r.yaml", "--out", "{out}"], _write("r.yaml", b"\x00\x01\xff"), "r.yaml"),
    ("task-unknown-name", ["run", "needle-papr-4k", "--out", "{out}"], None, "did you mean 'needle-paper-4k'?"),
    ("task-moved-path", ["run", "tasks/needle-paper-4k.yaml", "--out", "{out}"], None, "shipped task preset"),
    ("train-recipe-unknown-name", ["train", "--recipe", "sha-tny", "--out", "{out}"], None, "did you mean 'sha-tiny'?"),
    ("recipe-unknown-name", ["figures", "papr", "--results", "{t}", "--out", "{out}"], None, "did you mean 'paper'?"),
    ("figures-no-runs", ["figures", "paper", "--results", "{t}/none", "--out", "{out}"], None, "none"),
    ("compare-not-a-run", ["compare", "{t}", "--out", "{out}"], None, "results.json"),
    ("check-bad-suite", ["check", "{t}/s.yaml"], _write("s.yaml", "name: s\n"), "s.yaml"),
    # the judge, file targets and names (round 2)
    ("judge-url-not-a-url", ["halluc", "--judge-url", "not a url", "--judge-model", "j", "--ckpt", "{ck}", "--out", "{out}"], None, "--judge-url"),
    ("judge-url-file", ["halluc", "--judge-url", "file:///etc/passwd", "--judge-model", "j", "--ckpt", "{ck}", "--out", "{out}"], None, "http://"),
    ("judge-url-with-key", ["halluc", "--judge-url", "http://user:s3cr3t@127.0.0.1:9/v1", "--judge-model", "j", "--ckpt", "{ck}", "--out", "{out}"], None, "DIFFEVAL_JUDGE_API_KEY"),
    ("out-name-too-long", ["needle", *TINY[:-1], "{t}/" + "x" * 300], None, "too long"),
    ("ckpt-shard-outside-the-folder", ["info", "--ckpt", "{t}/ck"], _bad_ckpt(_shard_outside), "stolen.safetensors' must be a path inside"),
    # data that would give silently wrong results (round 2)
    ("ckpt-unilm-config-over-native-tensors", ["info", "--ckpt", "{t}/ck"],
     _bad_ckpt(lambda p: (p / "config.json").write_text(json.dumps(
         {"format": "unilm", "vocab_size": 259, "embed_dim": 64, "num_layers": 2, "num_heads": 2, "ffn_dim": 96,
          "max_seq_len": 1024}))), "not in the reference layout"),
    ("icl-labels-tokenize-alike", ["icl", "--data", "{t}/d.jsonl", "--shots", "1", "--test", "2", "--ckpt", "{t}/ck", "--out", "{out}"],
     lambda t, ck: (_bad_ckpt(lambda p: None, zoo=True)(t, ck), _write("d.jsonl", _rows([{"text": "a cat", "label": "猫"}] * 4
                                                                                         + [{"text": "a dog", "label": "犬"}] * 4))(t, ck)),
     "cannot be told apart"),
    ("icl-label-blank", ["icl", "--data", "{t}/d.jsonl", "--shots", "1", "--test", "2", "--ckpt", "{ck}", "--out", "{out}"],
     _write("d.jsonl", _rows([{"text": "a cat", "label": "x"}] * 4 + [{"text": "a dog", "label": "  "}] * 4)), "--label-field"),
    ("icl-text-blank", ["icl", "--data", "{t}/d.jsonl", "--shots", "1", "--test", "2", "--ckpt", "{ck}", "--out", "{out}"],
     _write("d.jsonl", _rows([{"text": "a cat", "label": "x"}] * 4 + [{"text": " \t ", "label": "y"}] * 4)), "--text-field"),
    ("halluc-answerable-a-string", ["halluc", "--data", "{t}/d.jsonl", "--ckpt", "{ck}", "--out", "{out}"],
     _write("d.jsonl", _rows([{"context": "The bridge opened in 1932.", "question": "When?", "answers": ["1932"],
                              "answerable": "no"}])), "'answerable' must be true or false"),
    ("halluc-question-blank", ["halluc", "--data", "{t}/d.jsonl", "--ckpt", "{ck}", "--out", "{out}"],
     _write("d.jsonl", _rows([{"context": "The bridge opened in 1932.", "question": "   "}])), "'question'"),
    ("nll-packed-empty-document", ["nll", "--len", "128", "--docs", "1", "--pack", "--data", "{t}/d.jsonl", "--ckpt", "{ck}", "--out", "{out}"],
     _write("d.jsonl", _rows([{"text": ""}, {"text": "words " * 100}])), "blank"),
    ("needle-prompt-and-budget-past-the-limit", ["needle", "--len", "1024", "--depths", "50", "--samples", "1", "--ckpt", "{ck}", "--out", "{out}"],
     None, "generation budget"),
    # report readers validate what they read (round 2)
    ("compare-results-a-list", ["compare", "{t}/run", "--out", "{out}"], _damaged_run(lambda r: [r]), "results.json"),
    ("compare-results-not-utf8", ["compare", "{t}/run", "--out", "{out}"], _damaged_run(lambda r: b"\xff\xfe{"), "not UTF-8"),
    ("compare-results-without-timing", ["compare", "{t}/run", "--out", "{out}"], _damaged_run(lambda r: r.pop("timing") and None), "'timing'"),
    ("compare-metric-value-text", ["compare", "{t}/run", "--out", "{out}"], _damaged_run(_metric_text), "value: expected number"),
    ("compare-figure-outside-the-run", ["compare", "{t}/run", "--out", "{out}"],
     _damaged_run(lambda r: r["artifacts"].update(figures=["../../secret.png"])), "secret.png"),
    ("figures-a-damaged-run", ["figures", "paper", "--results", "{t}", "--out", "{out}"], _damaged_run(_metric_text), "results.json"),
    ("figures-out-is-a-file", ["figures", "paper", "--results", "{t}/run", "--out", "{t}/file"],
     lambda t, ck: (_damaged_run(lambda r: None)(t, ck), _write("file", "x")(t, ck)), "not a folder"),
    ("check-tolerance-text", ["check", "{t}/s.yaml"], _check_files(REF % ", tolerance: abc"), "tolerance"),
    ("check-tolerance-nan", ["check", "{t}/s.yaml"], _check_files(REF % ", tolerance: .nan"), "tolerance"),
    ("check-reference-nan", ["check", "{t}/s.yaml"], _check_files(REF.replace("2.0", ".nan") % ""), "finite"),
    ("check-ci95-one-number", ["check", "{t}/s.yaml"], _check_files(REF % ", ci95: [1.0]"), "ci95"),
    ("check-reference-task-a-list", ["check", "{t}/s.yaml"], _check_files("metrics: {nll: [1, 2]}\n"), "nll"),
    # templates and task files (round 2)
    ("icl-template-positional-field", ["icl", "--shots", "1", "--template", "input: {text} {0} label: {label}", "--ckpt", "{ck}", "--out", "{out}"], None, "{0}"),
    ("icl-template-unmatched-brace", ["icl", "--shots", "1", "--template", "input: {text {label}", "--ckpt", "{ck}", "--out", "{out}"], None, "--template"),
    ("icl-template-unknown-field", ["icl", "--shots", "1", "--template", "input: {text} {other} label: {label}", "--ckpt", "{ck}", "--out", "{out}"], None, "{other}"),
    ("task-icl-template-field", ["run", "{t}/t.yaml", "--ckpt", "{ck}", "--out", "{out}"],
     _write("t.yaml", "name: t\nprobe: icl\nversion: 1\nparams: {shots: [1], template: 'x {text} {0} {label}'}\n"), "template"),
    ("chat-template-raises", ["needle", "--prompt-format", "chat", *TINY[:-3], "{t}/ck", "--out", "{out}"],
     _bad_ckpt(lambda p: (p / "chat_template.jinja").write_text("{{ 1 / 0 }}"), zoo=True), "ZeroDivisionError"),
    ("chat-template-enormous", ["needle", "--prompt-format", "chat", *TINY[:-3], "{t}/ck", "--out", "{out}"],
     _bad_ckpt(lambda p: (p / "chat_template.jinja").write_text(
         "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"), zoo=True), "chat template"),
    ("task-probe-a-list", ["run", "{t}/t.yaml", "--out", "{out}"], _write("t.yaml", "name: t\nprobe: [needle]\nversion: 1\n"), "needle"),
    ("task-probe-a-mapping", ["run", "{t}/t.yaml", "--out", "{out}"], _write("t.yaml", "name: t\nprobe: {a: 1}\nversion: 1\n"), "probe"),
    ("task-lengths-nested-deep", ["run", "{t}/t.yaml", "--out", "{out}"],
     _write("t.yaml", "name: t\nprobe: needle\nversion: 1\nparams: {lengths: " + "[" * 20000 + "]" * 20000 + "}\n"), "nested too deeply"),
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
        while HELD:
            HELD.pop().close()
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
    if before is not None:  # nothing added, nothing removed
        assert sorted(str(p) for p in tmp_path.rglob("*")) == before


# --- damaged state is redone, interrupted runs say how to resume, stdout faults ------------

def test_damaged_resume_records_are_skipped_with_one_warning_and_redone(ck, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["needle", "--len", "256", "--depths", "0,100", "--samples", "2", "--ckpt", ck, "--out", str(out)]
    assert run_cli(argv) == 0
    samples = (out / "samples.jsonl").read_text()
    resume = out / ".resume" / "transformer.jsonl"
    lines = resume.read_bytes().splitlines(keepends=True)
    assert len(lines) == 4
    record = json.loads(lines[1])
    del record["value"]["prediction"]
    damaged = [b"42\n", json.dumps(record).encode() + b"\n", b"\xff\xfe{\n", lines[2], lines[3][:20]]
    resume.write_bytes(lines[0] + b"".join(damaged))
    capsys.readouterr()
    assert run_cli(argv) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("diffeval:")]
    assert len(err) == 1 and "4 damaged record(s) skipped" in err[0] and "transformer.jsonl" in err[0], err
    results = json.loads((out / "results.json").read_text())
    assert results["timing"]["models"]["transformer"]["resumed_samples"] == 2  # lines 0 and 2 survived
    assert (out / "samples.jsonl").read_text() == samples


def test_ctrl_c_prints_the_command_that_resumes_it(ck, tmp_path, capsys, monkeypatch):
    import shlex

    from helpers import interrupt_after

    monkeypatch.chdir(tmp_path)
    argv = ["needle", "--len", "256", "--depths", "0,100", "--samples", "2", "--ckpt", ck]
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        assert run_cli(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("diffeval: interrupted;") and "resume with: diffeval needle" in err, err
    command = shlex.split(err.split("resume with: ", 1)[1])
    out = Path(command[command.index("--out") + 1])
    assert out.parent.name == "runs" and not (out / "results.json").exists()
    assert run_cli(command[1:]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["timing"]["models"]["transformer"]["resumed_samples"] == 2
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [out.name]  # no second folder


def test_refused_run_leaves_no_default_folder(ck, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(["needle", "--len", "64k", "--ckpt", ck]) == 2
    assert not (tmp_path / "runs").exists()


def test_results_are_strict_json(tmp_path):
    from diffeval.results import write_json, write_jsonl

    write_json(tmp_path / "r.json", {"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}})
    write_jsonl(tmp_path / "s.jsonl", [{"x": float("nan")}])
    strict = lambda text: json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))  # noqa: E731
    assert strict((tmp_path / "r.json").read_text()) == {"a": None, "b": [None, 1.5], "c": {"d": None}}
    assert strict((tmp_path / "s.jsonl").read_text()) == {"x": None}


def test_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    import errno

    from diffeval.errors import UsageError
    from diffeval.results import write_json

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UsageError, match="r.json: cannot write .No space left on device."):
        write_json(tmp_path / "r.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def _cli(*args, env=None, stdout=None):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "diffeval.cli", *args], stdout=stdout or subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}, timeout=300)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_stdout_on_a_full_device_is_one_line_exit_2():
    with open("/dev/full", "w") as full:
        res = _cli("zoo", stdout=full)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "diffeval: error: cannot write to standard output (No space left on device)"]


def test_a_foreign_mplbackend_does_not_matter(ck, tmp_path):
    res = _cli("needle", "--len", "256", "--depths", "50", "--samples", "1", "--ckpt", ck, "--out", str(tmp_path / "r"),
               env={"MPLBACKEND": "nonexistent"})
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "r" / "needle_heatmap.png").is_file()


# Root reads and writes everything, so the permission cases above are skipped under root;
# here the operating system's refusal is simulated at the call that meets it.
def _denied(*args, **kwargs):
    import errno

    raise PermissionError(errno.EACCES, "Permission denied")


@pytest.mark.parametrize("target, argv, culprit", [
    ("pathlib.Path.read_text", ["info", "--ckpt", "{ck}"], "config.json: permission denied"),
    ("pathlib.Path.mkdir", ["needle", *TINY], "cannot write there (Permission denied)"),
])
def test_permission_faults_are_reported_as_such(target, argv, culprit, ck, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(target, _denied)
    args = [a.replace("{ck}", ck).replace("{out}", str(tmp_path / "out")) for a in argv]
    assert run_cli(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and culprit in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_an_unlistable_checkpoint_folder_is_a_permission_error(ck, capsys, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert run_cli(["info", "--ckpt", ck]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("permission denied (cannot list the checkpoint directory)") and "No such" not in err


def test_a_damaged_statistics_state_is_recomputed_with_one_warning(ck, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["outliers", "--tokens", "500", "--len", "128", "--quant-bits", "16,4", "--ckpt", ck, "--out", str(out)]
    assert run_cli(argv) == 0
    first = json.loads((out / "results.json").read_text())
    state = out / ".resume" / "transformer.state.npz"
    state.write_bytes(state.read_bytes()[:100])  # cut by a kill
    capsys.readouterr()
    assert run_cli(argv) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("diffeval:")]
    assert len(err) == 1 and "transformer.state.npz: damaged" in err[0], err
    again = json.loads((out / "results.json").read_text())
    assert again["metrics"] == first["metrics"] and again["cells"] == first["cells"]


# --- round 2: file targets, names, streams, locales ----------------------------------------

NEEDLE = ["needle", "--len", "256", "--depths", "50", "--samples", "1"]


@pytest.mark.parametrize("planted", [".lock", "samples.jsonl.tmp", "results.json.tmp", ".resume/transformer.jsonl"])
def test_a_planted_symlink_in_out_is_never_followed(planted, ck, tmp_path, capsys):
    """A temporary file's name is the run's to replace (the link goes); a lock or resume log
    in the form of a link is refused, naming it. The link's target is never written."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "run"
    (out / planted).parent.mkdir(parents=True)
    (out / planted).symlink_to(victim)
    code = run_cli([*NEEDLE, "--ckpt", ck, "--out", str(out)])
    assert victim.read_text() == "precious\n"
    if planted.endswith(".tmp"):
        assert code == 0 and (out / "results.json").is_file() and not (out / "results.json").is_symlink()
    else:
        lines = [ln for ln in capsys.readouterr().err.splitlines() if "diffeval:" in ln]
        assert code == 2 and len(lines) == 1 and f"{Path(planted).name} is a symlink; not followed" in lines[0], lines


def test_safe_write_replaces_regular_files_and_writes_other_targets_in_place(tmp_path):
    from diffeval.results import write_atomic

    regular = tmp_path / "a.xml"
    regular.write_text("old")
    write_atomic(regular, "new")
    assert regular.read_text() == "new" and not list(tmp_path.glob("*.tmp"))
    target = tmp_path / "target.xml"
    target.write_text("old")
    link = tmp_path / "link.xml"
    link.symlink_to(target)
    write_atomic(link, "through", follow=True)  # a target the user named: written where it leads
    assert link.is_symlink() and target.read_text() == "through"
    write_atomic(link, "owned")  # a file the run owns: the link itself is replaced, never followed
    assert not link.is_symlink() and link.read_text() == "owned" and target.read_text() == "through"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    import threading

    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    write_atomic(fifo, "streamed", follow=True)
    reader.join(10)
    assert got == ["streamed"] and stat_is_fifo(fifo)


def stat_is_fifo(path: Path) -> bool:
    import stat

    return stat.S_ISFIFO(os.lstat(path).st_mode)


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="needs /dev/null")
def test_check_junit_to_a_device_or_a_link_to_one_leaves_it_a_device(tmp_path, capsys):
    import stat

    link = tmp_path / "out.xml"
    link.symlink_to("/dev/null")
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\nreference: ref.yaml\nmodels: [zoo:transformer-tiny]\ntasks:\n"
                     "  - {name: nll, probe: nll, params: {length: 128, docs: 1}}\n")
    runs = tmp_path / "runs"
    assert run_cli(["check", str(suite), "--runs", str(runs), "--update"]) == 0
    assert run_cli(["check", str(suite), "--runs", str(runs), "--junit", str(link), "--summary", "/dev/null"]) == 0
    assert link.is_symlink() and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert not list(tmp_path.glob("*.tmp")) and not list(Path("/dev").glob("null*.tmp"))
    if Path("/dev/full").exists():  # a device that refuses the write: one line, and still a device
        capsys.readouterr()
        assert run_cli(["check", str(suite), "--runs", str(runs), "--junit", "/dev/full"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1].startswith("diffeval: error: /dev/full: cannot write"), lines
        assert stat.S_ISCHR(os.stat("/dev/full").st_mode) and not list(Path("/dev").glob("full*.tmp"))


def test_a_task_name_never_leads_outside_runs(ck, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "work").mkdir()
    for i, name in enumerate(["../../../../x", str(tmp_path / "abs"), "y" * 300]):
        task = tmp_path / f"t{i}.yaml"
        task.write_text(json.dumps({"name": name, "probe": "needle", "version": 1,
                                    "params": {"lengths": [256], "depths": [50], "samples": 1}}))
        assert run_cli(["run", str(task), "--ckpt", ck]) == 0
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == ["runs", "t0.yaml", "t1.yaml", "t2.yaml", "work"], made
    assert len(list((tmp_path / "runs").iterdir())) == 3
    assert all(len(p.name) < 120 for p in (tmp_path / "runs").iterdir())


def test_an_icl_preset_with_shots_and_no_lengths_runs(ck, tmp_path):
    task = tmp_path / "t.yaml"
    task.write_text("name: t\nprobe: icl\nversion: 1\nparams: {shots: [1, 2], test: 4, permutations: 1}\n")
    assert run_cli(["run", str(task), "--ckpt", ck, "--out", str(tmp_path / "r")]) == 0
    assert run_cli(["icl", "--test", "4", "--permutations", "1", "--ckpt", ck, "--out", str(tmp_path / "plain")]) == 0


def test_train_ctrl_c_prints_the_command_that_resumes_it(tmp_path, capsys, monkeypatch):
    import shlex

    import diffeval.train.trainer as trainer

    recipe = tmp_path / "r.yaml"
    recipe.write_text(MICRO_RECIPE.replace("steps: 2", "steps: 4") + "checkpoint_every: 2\nlog_every: 2\n")
    original, calls = trainer._train_step, {"n": 0}

    def step_then_stop(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(trainer, "_train_step", step_then_stop)
        assert run_cli(["train", "--recipe", str(recipe), "--out", str(tmp_path / "t"), "--no-resume"]) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("diffeval: interrupted;") and "resume with: diffeval train" in err, err
    command = shlex.split(err.split("resume with: ", 1)[1])
    assert "--no-resume" not in command and command[command.index("--out") + 1] == str(tmp_path / "t")
    assert run_cli(command[1:]) == 0
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["steps"] == 4


def test_a_closed_stdout_is_one_line_exit_2_after_the_files_are_written(ck, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "r"
    res = subprocess.run([sys.executable, "-m", "diffeval.cli", *NEEDLE, "--ckpt", ck, "--out", str(out)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300,
                         preexec_fn=lambda: os.close(1))
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("diffeval:")]
    assert res.returncode == 2 and lines == ["diffeval: error: cannot write to standard output (it is closed); "
                                             "what the command wrote to files is kept"], res.stderr
    assert "Traceback" not in res.stderr and (out / "results.json").is_file()


def test_a_non_utf8_locale_with_a_non_ascii_checkpoint_path(tmp_path):
    import subprocess
    import sys

    ckpt = tmp_path / "modèle"
    copy_zoo_model("transformer-tiny", ckpt)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}
    env.pop("PYTHONIOENCODING")
    res = subprocess.run([sys.executable, "-X", "utf8=0", "-m", "diffeval.cli", *NEEDLE, "--ckpt", str(ckpt),
                          "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["models"][0]["label"] == "modèle"


def test_os_faults_with_a_file_name_are_one_line(ck, tmp_path, capsys, monkeypatch):
    """An unreadable .txt in a data folder (simulated: root reads everything)."""
    data = tmp_path / "docs"
    data.mkdir()
    (data / "a.txt").write_text("some words " * 200)
    (data / "b.txt").write_text("more words " * 200)
    real_open = open

    def deny_b(file, *args, **kwargs):
        if str(file).endswith("b.txt"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", deny_b)
    assert run_cli(["nll", "--len", "128", "--docs", "1", "--data", str(data), "--ckpt", ck,
                    "--out", str(tmp_path / "o")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "b.txt" in lines[0] and "ermission denied" in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_outliers_tokens_1m_is_accepted():
    from diffeval.probes import get_probe

    assert get_probe("outliers").config({"n_tokens": "1m"}).n_tokens == 1 << 20


def test_a_data_file_that_grows_during_the_run_is_refused(ck, tmp_path, capsys, monkeypatch):
    import diffeval.run as run_mod

    data = tmp_path / "d.txt"
    data.write_text("Some words of a document. " * 200)
    original = run_mod._run_model

    def then_grow(job, label, spec):
        original(job, label, spec)
        with open(data, "a", encoding="utf-8") as f:
            f.write("More words appended by another process. " * 50)

    monkeypatch.setattr(run_mod, "_run_model", then_grow)
    assert run_cli(["nll", "--len", "128", "--docs", "1", "--data", str(data), "--ckpt", ck,
                    "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    lines = [ln[ln.index("diffeval:"):] for ln in err.splitlines() if "diffeval:" in ln]
    assert len(lines) == 1 and "d.txt" in lines[0] and "changed while the run read it" in lines[0], lines
    assert "Traceback" not in err and not (tmp_path / "o" / "results.json").exists()


def test_a_file_of_one_huge_line_is_read_and_tokenized_in_pieces(ck, tmp_path, monkeypatch):
    from diffeval import textdata

    text = " ".join(f"word{i % 97}" for i in range(400_000))  # about 2.7 MB on one line
    path = tmp_path / "one-line.txt"
    path.write_text(text)
    blocks = list(textdata.file_blocks(path, "data"))
    assert len(blocks) > 3 and max(map(len, blocks)) <= 2 * textdata.LINE_CHARS + 16
    assert "".join(blocks) == text + "\n\n" and all(b[:1] == " " for b in blocks[1:-1])  # cut before a space
    pieces = list(textdata.text_pieces(text))
    assert "".join(pieces) == text and max(map(len, pieces)) <= textdata.LINE_CHARS
    encoded = []
    import diffeval.probes.streams as streams

    original = streams.take_tokens

    def counting(blocks_, encode, n):
        return original(blocks_, lambda s: encoded.append(len(s)) or encode(s), n)

    monkeypatch.setattr(streams, "take_tokens", counting)
    assert run_cli(["nll", "--len", "128", "--docs", "1", "--data", str(path), "--ckpt", ck,
                    "--out", str(tmp_path / "o")]) == 0
    assert encoded and sum(encoded) <= 2 * textdata.LINE_CHARS  # one block tokenized, not the whole line


def test_arrays_deleted_or_replaced_after_a_finished_run_are_recomputed_with_one_warning(ck, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["attn-map", "--len", "256", "--depths", "0,100", "--samples", "1", "--ckpt", ck, "--out", str(out)]
    assert run_cli(argv) == 0
    arrays = sorted((out / "arrays").glob("*.npz"))
    first = {p.name: p.read_bytes() for p in arrays}
    arrays[0].unlink()
    arrays[-1].write_bytes(b"PK\x03\x04 replaced")
    capsys.readouterr()
    assert run_cli(argv) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("diffeval:")]
    assert len(err) == 1 and "arrays are missing or changed are recomputed" in err[0], err
    assert {p.name: p.read_bytes() for p in (out / "arrays").glob("*.npz")} == first
    results = json.loads((out / "results.json").read_text())
    assert results["timing"]["models"]["transformer"]["resumed_samples"] == 0
