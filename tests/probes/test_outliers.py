"""`diffeval outliers` end to end on tiny models, through diffeval.cli.main."""

import json

import pytest
import torch

import diffeval
from helpers import run_cli as run, saved_tiny_models

BASE = ["--tokens", "600", "--len", "128", "--device", "cpu"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return saved_tiny_models(tmp_path_factory.mktemp("ckpts"))




def test_outliers_writes_every_artifact(ckpts, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(["outliers", "--ckpt", ckpts[0], "--ckpt", ckpts[1], *BASE, "--quant-bits", "16,8,4",
                "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    for key in ("schema_version", "probe", "task", "models", "metrics", "cells", "timing", "provenance", "artifacts"):
        assert key in results
    assert results["probe"] == "outliers" and results["task"]["name"] == "outliers"
    assert results["task"]["params"]["bits"] == [16, 8, 4]
    assert [m["label"] for m in results["models"]] == ["transformer", "diff"]
    acts = [(c["model"], c["activation"]) for c in results["cells"] if c["kind"] == "activation"]
    assert acts == [("transformer", "attention_logits"), ("transformer", "hidden_states"),
                    ("diff", "attention_logits"), ("diff", "attention_logits_map1"),
                    ("diff", "attention_logits_map2"), ("diff", "hidden_states")]
    quant = [(c["model"], c["bits"]) for c in results["cells"] if c["kind"] == "quant"]
    assert quant == [(m, b) for m in ("transformer", "diff") for b in (16, 8, 4)]
    for label in ("transformer", "diff"):
        met = results["metrics"][label]
        assert met["n_tokens"]["value"] == 600 and met["n_tokens"]["n"] == 5  # 5 sequences: 4 x 128 + 88
        top = [met[f"attention_logits.{k}"]["value"] for k in ("top1", "top2", "top3", "top10", "top100", "median")]
        assert top == sorted(top, reverse=True) and top[-1] > 0
        layers = [c for c in results["cells"] if c["model"] == label and c["kind"] == "layer"
                  and c["activation"] == "hidden_states"]
        assert [c["layer"] for c in layers] == [0, 1]
        # the 16-bit pass is the statistics pass: 3 passes of 600 tokens for bits 16, 8, 4
        assert results["timing"]["models"][label]["prefilled_tokens"] == 600 * 3
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 5 and sum(r["n_tokens"][0] for r in rows) == 2 * 600
    assert set(rows[0]["nll"]) == {"16", "8", "4"}
    figures = results["artifacts"]["figures"]
    assert sorted(figures) == ["outliers_by_layer.pdf", "outliers_by_layer.png", "quant_curve.pdf", "quant_curve.png"]
    for name in figures:
        assert (out / name).stat().st_size > 1000
    table = capsys.readouterr().out
    assert "top-100" in table and "median" in table and "attn logits" in table and "4 bits" in table


def test_16_bit_nll_equals_the_model_without_a_hook(ckpts, tmp_path):
    """Rebuild the sequences from the recorded hashes' source and score them independently."""
    from diffeval.engine import ids_sha256 as _ids_hash
    from diffeval.probes import activations as probe
    from diffeval.probes.streams import text_blocks

    out = tmp_path / "run"
    assert run(["outliers", "--ckpt", ckpts[1], *BASE, "--quant-bits", "16,6", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    loaded = diffeval.load(ckpts[1])
    tok = loaded.tokenizer
    stream = probe.token_stream(text_blocks("synthetic", 0), tok.encode)
    total, n = 0.0, 0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    for row, (_, seq) in zip(rows, probe.sequences(stream, 600, 128, tok.bos_id)):
        assert row["ids_sha256"] == _ids_hash(seq)
        ids = torch.tensor([seq])
        with torch.no_grad():
            logits = loaded.model(ids)  # the fast path: no hook, no statistics
        nll = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum")
        total, n = total + float(nll), n + len(seq) - 1
    nll16 = results["metrics"]["diff"]["nll@bits=16"]
    assert nll16["value"] == pytest.approx(total / n, abs=1e-5)
    assert nll16["n"] == n and nll16["higher_is_better"] is False


def test_needle_metric_and_a_data_file(ckpts, tmp_path):
    text = tmp_path / "book.txt"
    text.write_text(" ".join(f"The river bends near the old mill, sentence {i}." for i in range(40)) + "\n")
    out = tmp_path / "run"
    assert run(["outliers", "--ckpt", ckpts[0], "--data", str(text), "--tokens", "all", "--len", "256",
                "--device", "cpu", "--metric", "needle", "--samples", "1", "--depths", "0,100",
                "--quant-bits", "16,4", "--max-new-tokens", "3", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    size = len(text.read_text().encode()) + 1  # byte tokenizer: every byte plus the closing blank line
    n_seq = -(-size // 255)
    assert results["metrics"]["transformer"]["n_tokens"]["value"] == size + n_seq  # the real count, BOS included
    assert results["data"]["text"]["kind"] == "path" and len(results["data"]["text"]["sha256"]) == 64
    quant = [c for c in results["cells"] if c["kind"] == "quant"]
    assert [(c["bits"], c["metric"], c["n"]) for c in quant] == [(16, "needle", 2), (4, "needle", 2)]
    assert all(0 <= c["ci95"][0] <= c["value"] <= c["ci95"][1] <= 1 for c in quant)
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    needles = [r for r in rows if r["kind"] == "needle"]
    assert len(needles) == 2 * 2 and {r["bits"] for r in needles} == {16, 4}
    assert all(r["n_tokens"] == [256] for r in needles)


@pytest.mark.parametrize("argv,needle", [
    (["--quant-bits", "1"], "1 bits"),
    (["--quant-bits", "8,8"], "twice"),
    (["--metric", "hellaswag"], "hellaswag"),
    (["--tokens", "0"], "--tokens"),
    (["--tokens", "lots"], "lots"),
    (["--len", "4k"], "1024"),  # beyond the model's position limit
    (["--len", "128,256"], "give one length"),
    (["--data", "/no/such/corpus.txt"], "/no/such/corpus.txt"),
    (["--device", "tpu"], "tpu"),
    (["--tokens", "all"], "synthetic text never ends"),
])
def test_bad_outliers_options_exit_2(ckpts, tmp_path, capsys, argv, needle):
    code = run(["outliers", "--ckpt", ckpts[0], *BASE, *argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and needle in err
    assert not (tmp_path / "o").exists()


def test_too_little_data_is_an_error_naming_the_count(ckpts, tmp_path, capsys):
    text = tmp_path / "short.txt"
    text.write_text("Only a few words here.\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(["outliers", "--ckpt", ckpts[0], "--data", str(text), *BASE, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds 25 tokens" in err and "600" in err and "--data" in err
    assert run(["outliers", "--ckpt", ckpts[0], "--data", str(empty), *BASE, "--out", str(tmp_path / "o")]) == 2
    assert "no .txt files" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_quant_curve_data_follows_the_cells():
    from diffeval.plotting.outliers import quant_series

    cells = [{"model": "a", "kind": "quant", "bits": b, "value": v, "n": 10}
             for b, v in ((4, 0.2), (16, 0.9), (8, 0.8))]
    cells.append({"model": "a", "kind": "activation", "activation": "hidden_states", "top1": 3.0})
    bits, values, ci = quant_series(cells, "a")
    assert bits == [16, 8, 4] and values.tolist() == [0.9, 0.8, 0.2] and ci is None
