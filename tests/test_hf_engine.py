"""--engine hf: transformers' models under the engine's scheduling. Against the native engine
on architectures both implement (identical predictions, scores within 1e-4, the same prefill
counts); against plain transformers calls (full forward, generate) on architectures only
transformers implements; and every text probe through the one pipeline on those."""

import json
import shutil

import jsonschema
import numpy as np
import pytest
import torch
import transformers as tf
from helpers import interrupt_after, run_cli
from hf_models import VOCAB, _byte_level_tokenizer, hf_model

from diffeval.checkpoints import load
from diffeval.engine import Engine
from diffeval.errors import CheckpointError, UsageError
from diffeval.hf_engine import HFEngine
from diffeval.hf_engine import load as load_hf
from diffeval.probes import get_probe
from diffeval.requests import Choice, Generate, TokenNLL
from diffeval.results import SCHEMA_FILE
from diffeval.run import RunOptions, run_probe

FOREIGN = ("gemma2", "phi3", "olmo2")  # architectures diffeval's own model code does not implement
TEXT_PROBES = ("needle", "passkey", "nll", "icl", "halluc")
HF = RunOptions(device="cpu", max_new_tokens=3, progress=False, engine="hf")


def _work() -> tuple[list, list, list]:
    """Generate requests over prompts that share a 70-token prefix (two of equal length, so
    they decode as one batch), Choice requests on two of them, one TokenNLL."""
    rng = np.random.default_rng(0)
    base = rng.integers(2, VOCAB, 70).tolist()
    prompts = [tuple(base + rng.integers(2, VOCAB, k).tolist()) for k in (5, 5, 9, 30)]
    gens = [[Generate(p, 6, stop_text=None)] for p in prompts]
    choices = [[Choice(p, ((3,), (4, 5), (6, 7, 8)))] for p in prompts[:2]]
    return gens, choices, [[TokenNLL(prompts[3] + prompts[1])]]


def _outputs(engine, work) -> list:
    return [out for _, out in sorted(engine.run(work), key=lambda x: x[0])]


@pytest.mark.parametrize("kind", ["llama", "diffllama"])
def test_hf_engine_matches_the_native_engine(kind, hf_dir):
    d = hf_dir(kind, n_kv=2)
    native, hf = load(str(d)), load_hf(str(d))
    gens, choices, nll = _work()
    a = Engine(native.model, stop_ids=frozenset({1}), batch_size=2, align=16)
    b = HFEngine(hf.model, stop_ids=frozenset({1}), batch_size=2, align=16, nll_chunk=7)
    assert _outputs(a, gens) == _outputs(b, gens)
    for x, y in zip(_outputs(a, choices), _outputs(b, choices)):
        assert [s.greedy for s in x[0]] == [s.greedy for s in y[0]]
        np.testing.assert_allclose([s.logprob for s in x[0]], [s.logprob for s in y[0]], atol=1e-4)
    np.testing.assert_allclose(_outputs(a, nll)[0][0], _outputs(b, nll)[0][0], atol=1e-4)
    for name in ("requests", "prompt_tokens", "prefilled_tokens", "generated_tokens"):
        assert getattr(a.counters, name) == getattr(b.counters, name), name
    assert a.counters.prefilled_tokens < a.counters.prompt_tokens  # the shared prefix was reused
    assert hf.info.engine == "hf" and hf.info.engine_version.startswith("transformers ")
    assert hf.info.fingerprint() != native.info.fingerprint()


@pytest.mark.parametrize("kind", FOREIGN)
def test_hf_engine_matches_plain_transformers_calls(kind, hf_dir):
    """Chunked prefill, cache roll-back, stacked batch caches and chunked NLL give what one
    full forward pass (eager attention, no cache) and transformers' own generate give; Gemma 2's
    sliding window (24) is shorter than the prompts."""
    d = hf_dir(kind, n_kv=2, max_pos=1024)
    ref = hf_model(d)
    engine = HFEngine(load_hf(str(d)).model, stop_ids=frozenset({1}), batch_size=2, align=16, nll_chunk=7)
    gens, choices, nll = _work()
    with torch.no_grad():
        for req, out in zip(gens, _outputs(engine, gens)):
            ids = torch.tensor([req[0].prompt])
            full = ref.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=1, pad_token_id=1)
            want = full[0, ids.shape[1]:].tolist()
            assert out[0] == (want[:want.index(1)] if 1 in want else want)
        for req, out in zip(choices, _outputs(engine, choices)):
            for cand, score in zip(req[0].candidates, out[0]):
                ids = torch.tensor([req[0].prompt + cand])
                logp = torch.log_softmax(ref(ids).logits[0].double(), -1)  # (T, V)
                n = len(req[0].prompt)
                want = sum(float(logp[n - 1 + k, t]) for k, t in enumerate(cand))
                assert score.logprob == pytest.approx(want, abs=1e-4)
        ids = torch.tensor([nll[0][0].ids])
        logp = torch.log_softmax(ref(ids).logits[0, :-1].double(), -1)
        want = -logp.gather(-1, ids[0, 1:, None])[:, 0].numpy()
        np.testing.assert_allclose(_outputs(engine, nll)[0][0], want, atol=1e-4)


@pytest.fixture(scope="module")
def foreign_runs(tmp_path_factory, hf_dir):
    """Each text probe's quick run on every foreign architecture at once (three models in one run)."""
    ckpts = [str(hf_dir(k, n_kv=2, max_pos=1024)) for k in FOREIGN]
    root = tmp_path_factory.mktemp("hf-runs")
    out = {}
    for name in TEXT_PROBES:
        probe = get_probe(name)
        out[name] = (root / name, run_probe(probe, probe.config(probe.quick), ckpts, root / name, HF), ckpts)
    return out


@pytest.mark.parametrize("name", TEXT_PROBES)
def test_text_probes_run_on_architectures_only_transformers_implements(name, foreign_runs):
    out, _, ckpts = foreign_runs[name]
    schema = json.loads(SCHEMA_FILE.read_text())
    on_disk = json.loads((out / "results.json").read_text())
    jsonschema.validate(on_disk, schema)
    assert on_disk["run"]["engine"] == "hf" and on_disk["run"]["transformers"]
    assert [m["family"] for m in on_disk["models"]] == list(FOREIGN)
    assert all(m["engine"] == "hf" and m["backend"].startswith("hf-") for m in on_disk["models"])
    assert on_disk["models"][0]["backend"] == "hf-eager"  # Gemma 2: transformers runs it eagerly only
    for label, t in on_disk["timing"]["models"].items():
        assert t["prefilled_tokens"] > 0 and t["phases"]["prefill"] > 0, label
    lines = (out / "samples.jsonl").read_text()
    # a rerun resumes every sample from the cache, to the same files
    probe = get_probe(name)
    again = run_probe(probe, probe.config(probe.quick), ckpts, out, HF)
    assert all(t["resumed_samples"] == t["samples"] for t in again["timing"]["models"].values())
    assert (out / "samples.jsonl").read_text() == lines


def test_an_interrupted_hf_run_resumes_to_the_same_files(foreign_runs, tmp_path, monkeypatch):
    whole, _, ckpts = foreign_runs["needle"]
    probe = get_probe("needle")
    with monkeypatch.context() as m:
        interrupt_after(m, 3)
        with pytest.raises(KeyboardInterrupt):
            run_probe(probe, probe.config(probe.quick), ckpts, tmp_path, HF)
    assert not (tmp_path / "results.json").exists()
    again = run_probe(probe, probe.config(probe.quick), ckpts, tmp_path, HF)
    assert sum(t["resumed_samples"] for t in again["timing"]["models"].values()) == 3
    assert (tmp_path / "samples.jsonl").read_text() == (whole / "samples.jsonl").read_text()


def test_ruler_runs_on_an_architecture_only_transformers_implements(hf_dir, tmp_path):
    probe = get_probe("ruler")
    params = {**probe.quick, "tasks": ["niah_single_1", "vt"]}
    results = run_probe(probe, probe.config(params), [str(hf_dir("olmo2", n_kv=2, max_pos=1024))], tmp_path, HF)
    jsonschema.validate(results, json.loads(SCHEMA_FILE.read_text()))
    assert {c["task"] for c in results["cells"] if "task" in c} >= {"niah_single_1", "vt"}


def test_engine_is_in_the_resume_key_and_compare_reads_both(hf_dir, tmp_path, capsys):
    d = str(hf_dir("llama", n_kv=2))
    common = ["needle", "--ckpt", d, "--len", "200", "--depths", "0,100", "--samples", "2"]
    assert run_cli([*common, "--out", str(tmp_path / "native")]) == 0
    assert run_cli([*common, "--engine", "hf", "--out", str(tmp_path / "hf")]) == 0
    native = json.loads((tmp_path / "native" / "results.json").read_text())
    hf = json.loads((tmp_path / "hf" / "results.json").read_text())
    assert native["run"]["engine"] == "native" and "transformers" not in native["run"]
    assert hf["run"]["engine"] == "hf" and hf["models"][0]["engine"] == "hf"

    def predictions(run):
        return [json.loads(line)["prediction"] for line in (tmp_path / run / "samples.jsonl").read_text().splitlines()]

    assert predictions("native") == predictions("hf")
    # the same folder, the other engine: another run (not resumed from the native engine's outputs)
    capsys.readouterr()
    assert run_cli([*common, "--engine", "hf", "--out", str(tmp_path / "native")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    shutil.copytree(tmp_path / "native" / ".resume", tmp_path / "hf2" / ".resume")
    assert run_cli([*common, "--engine", "hf", "--out", str(tmp_path / "hf2")]) == 0
    t = json.loads((tmp_path / "hf2" / "results.json").read_text())["timing"]["models"]
    assert all(m["resumed_samples"] == 0 for m in t.values())
    assert run_cli(["compare", str(tmp_path / "native"), str(tmp_path / "hf"), "--out", str(tmp_path / "rep")]) == 0
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "native" in report and "hf" in report


@pytest.mark.parametrize("name", ["attn-map", "outliers"])
def test_attention_analysis_refuses_the_hf_engine(name, hf_dir, tmp_path, capsys):
    assert run_cli([name, "--ckpt", str(hf_dir("llama", n_kv=2)), "--engine", "hf", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--engine native" in err and "diffeval's own" in err
    assert not (tmp_path / "o").exists()


def test_checkpoints_transformers_cannot_load_safely_are_refused(hf_dir, tmp_path):
    src = hf_dir("olmo2", n_kv=2, max_pos=1024)
    remote = tmp_path / "remote"
    shutil.copytree(src, remote)
    cfg = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**cfg, "model_type": "my_own_lm",
                                                    "auto_map": {"AutoModelForCausalLM": "modeling.MyLM"}}))
    with pytest.raises(CheckpointError, match="trust_remote_code"):
        load_hf(str(remote))
    short = tmp_path / "short"
    shutil.copytree(src, short)
    (short / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": cfg["num_hidden_layers"] + 1}))
    with pytest.raises(CheckpointError, match="missing keys"):
        load_hf(str(short))
    with pytest.raises(CheckpointError, match="--engine native"):
        load_hf("zoo:diff-tiny")
    mamba = tmp_path / "mamba"  # recurrent state: no key/value cache to roll back
    tf.MambaForCausalLM(tf.MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=4)
                        ).save_pretrained(str(mamba))
    _byte_level_tokenizer(mamba)
    with pytest.raises(CheckpointError, match="roll back"):
        load_hf(str(mamba))
    with pytest.raises(UsageError, match="triton"):
        load_hf(str(src), backend="triton")
    with pytest.raises(CheckpointError, match="--engine hf"):
        load(str(src))  # the native engine names the way to run it
