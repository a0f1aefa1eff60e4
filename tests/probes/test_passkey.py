"""`passkey`: exact-length prompts with the key sentence at its depth, seeded samples, the
exact-number scorer, bad input, and a run through the command line on a zoo model."""

import json
import re
from types import SimpleNamespace

import pytest

from diffeval.checkpoints import load
from diffeval.errors import ConfigError
from diffeval.probes import passkey as P
from diffeval.run import RunOptions, model_context
from helpers import run_cli

OPTS = RunOptions(device="cpu", progress=False)


@pytest.fixture(scope="module")
def ctx():
    return model_context("transformer-tiny", load("zoo:transformer-tiny"), OPTS)


def _samples(ctx, **params):
    return P.PROBE.generate(P.PROBE.config({"lengths": "300,700", "depths": "0,50,100", "samples": 2, **params}), ctx)


def test_prompts_are_exact_and_hold_the_key_twice_at_its_depth(ctx):
    tok = ctx.tokenizer
    samples = _samples(ctx)
    assert len(samples) == 2 * 2 * 3 and len({s.id for s in samples}) == len(samples)
    for s in samples:
        assert len(s.prompt) == s.length
        text = tok.decode(list(s.prompt))
        assert text.count(s.key) == 2 and P.INSTRUCTION.strip() in text
        assert text.rstrip().endswith(P.ANSWER)
        sentence = tok.decode(list(s.prompt[s.key_span[0]:s.key_span[1]]))
        assert P.KEY_SENTENCE.format(value=s.key) in sentence and len(s.key) == 5
    for length in (300, 700):  # one key per (length, index); it moves deeper with the depth
        group = [s for s in samples if s.length == length and s.index == 0]
        assert len({s.key for s in group}) == 1
        starts = [s.key_span[0] for s in sorted(group, key=lambda s: s.depth)]
        assert starts == sorted(starts) and starts[0] < starts[-1]


def test_samples_are_seeded(ctx):
    a, b = _samples(ctx), _samples(ctx)
    assert [(s.key, s.prompt) for s in a] == [(s.key, s.prompt) for s in b]
    other = _samples(ctx, seed=1)
    assert [s.key for s in other] != [s.key for s in a]
    assert all(len(s.key) == 3 for s in _samples(ctx, digits=3))


@pytest.mark.parametrize("answer, score", [(" 12345.", 1.0), (" 12345 is the pass key", 1.0), (" 123456", 0.0),
                                           (" 1234", 0.0), (" unknown 12345", 1.0), (" 54321 or 12345", 0.0),
                                           ("", 0.0)])
def test_score_is_the_first_number_exactly(answer, score):
    tok = SimpleNamespace(decode=lambda ids: answer)
    s = P.Sample("x", 300, 0.0, 0, (1, 2), "12345", (0, 1))
    record = P.PROBE.score(P.PROBE.config({"lengths": "300"}), s, [[]], SimpleNamespace(tokenizer=tok))
    assert record["score"] == score and record["all_correct"] == (score == 1.0)


@pytest.mark.parametrize("params, field", [({"digits": 0}, "digits"), ({"digits": 19}, "digits"),
                                           ({"depths": "120"}, "depths"), ({"samples": 0}, "samples")])
def test_bad_parameters_name_the_field(params, field):
    with pytest.raises(ConfigError) as err:
        P.PROBE.config({"lengths": "300", **params})
    assert err.value.field == field


def test_runs_from_the_command_line_and_refuses_bad_input(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["passkey", "--ckpt", "zoo:sha-tiny", "--len", "256", "--depths", "0,100", "--samples", "2",
            "--out", str(out)]
    assert run_cli(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["probe"] == "passkey" and results["task"]["params"]["digits"] == 5
    assert [(c["length"], c["depth"]) for c in results["cells"]] == [(256, 0.0), (256, 100.0)]
    assert results["artifacts"]["figures"] == ["passkey_heatmap.png", "passkey_heatmap.pdf"]
    assert "pass key retrieval by depth" in capsys.readouterr().out
    assert run_cli(argv) == 0  # a rerun resumes every sample
    assert json.loads((out / "results.json").read_text())["timing"]["models"]["sha-tiny"]["resumed_samples"] == 4
    capsys.readouterr()
    assert run_cli(["passkey", "--ckpt", "zoo:sha-tiny", "--digits", "x", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--digits" in err and not (tmp_path / "b").exists()
    assert re.search(r"--overwrite", run_help("passkey", capsys))


def run_help(name: str, capsys) -> str:
    assert run_cli([name, "--help"]) == 0
    return capsys.readouterr().out
