"""`diffeval attn-map`: span accounting, DIFF normalisation, arrays, CLI end to end."""

import json

import numpy as np
import pytest
import torch

import diffeval
from diffeval.cli import main
from diffeval.probes.attention import CATEGORIES, Spans, allocation, normalise_rows
from diffeval.stats import breakdown
from diffeval.specs import parse_index_list
from helpers import tiny_model


def test_allocation_of_a_constructed_row_is_exact():
    spans = Spans(n_tokens=20, answer=(8, 10), needle=(6, 11), others=((14, 16),), sink=2, n_context=17)
    row = np.zeros(20)
    row[[0, 1]] = [0.05, 0.05]  # sink
    row[8:10] = 0.2  # answer: 0.4
    row[6] = 0.1  # needle (rest)
    row[15] = 0.15  # other needle
    row[17:20] = 0.05  # query: 0.15
    row[3] = 0.1  # noise
    got = dict(zip(CATEGORIES, allocation(row[None], spans.labels())[0]))
    want = {"answer": 0.4, "needle": 0.1, "other_needles": 0.15, "sink": 0.1, "query": 0.15, "noise": 0.1}
    for k in CATEGORIES:
        assert got[k] == pytest.approx(want[k])


def test_overlapping_spans_follow_priority():
    # a needle at depth 0 overlaps the sink: its tokens count as needle, not sink
    spans = Spans(n_tokens=10, answer=(2, 3), needle=(1, 4), others=(), sink=4, n_context=8)
    lab = spans.labels()
    assert [CATEGORIES[i] for i in lab] == ["sink", "needle", "answer", "needle", "noise", "noise",
                                            "noise", "noise", "query", "query"]


def test_diff_normalisation_sums_to_one():
    alloc = np.array([0.1, 0.05, 0.0, 0.2, 0.1, -0.05])  # sums to 0.4 = 1 - lambda
    norm = normalise_rows(alloc[None], np.array([0.6]))
    assert norm.sum() == pytest.approx(1.0)
    assert np.isnan(normalise_rows(alloc[None], np.array([1.0]))).all()
    # V2: each row by its own lambda
    rows = np.stack([alloc, alloc * 0.5])  # sums 0.4 and 0.2
    both = normalise_rows(rows, np.array([0.6, 0.8]))
    assert both.sum(-1) == pytest.approx([1.0, 1.0])


def test_index_lists():
    assert parse_index_list("all", 4, "layers") == [0, 1, 2, 3]
    assert parse_index_list("0,-1", 48, "layers") == [0, 47]
    with pytest.raises(Exception, match="out of range"):
        parse_index_list("5", 4, "heads")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("am")
    out = {}
    for family in ("transformer", "diff", "diff2"):
        model = tiny_model(family, vocab_size=259, max_seq_len=2048)
        if family == "diff2":  # lambda varying from token to token and head to head
            with torch.no_grad():
                for layer in model.layers:
                    layer.attn.lambda_proj.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
        diffeval.save(model, root / family)
        out[family] = str(root / family)
    uniform = tiny_model("transformer", vocab_size=259, max_seq_len=2048)
    with torch.no_grad():
        for layer in uniform.layers:
            layer.attn.q_proj.weight.zero_()  # every logit 0: uniform attention over visible keys
    diffeval.save(uniform, root / "uniform")
    out["uniform"] = str(root / "uniform")
    return out


ARGS = ["--len", "400", "--depths", "0,50,100", "--samples", "1", "--needles", "3", "--device", "cpu"]


def test_uniform_attention_model_gives_span_fractions(ckpts, tmp_path):
    out = tmp_path / "u"
    main(["attn-map", "--ckpt", ckpts["uniform"], *ARGS, "--query", "last", "--out", str(out)])
    rows = [json.loads(l) for l in (out / "samples.jsonl").read_text().splitlines()]
    for r in rows:
        npz = np.load(out / "arrays" / f"uniform__{r['id']}.npz")
        n = len(npz["input_ids"])
        spans = Spans(n, tuple(npz["span_answer"]), tuple(npz["span_needle"]),
                      tuple(map(tuple, npz["span_others"])), int(npz["span_sink"][1]), int(npz["span_query"][0]))
        counts = np.bincount(spans.labels(), minlength=len(CATEGORIES)) / n
        for k, c in enumerate(CATEGORIES):
            assert r["allocation"][c] == pytest.approx(counts[k], abs=1e-5)
        assert np.allclose(npz["layer0"], 1.0 / n, atol=1e-6)


def test_attn_map_end_to_end_writes_everything(ckpts, tmp_path, capsys):
    out = tmp_path / "run"
    main(["attn-map", "--ckpt", ckpts["transformer"], "--ckpt", ckpts["diff"], *ARGS, "--layers", "0,-1",
          "--heads", "all", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert results["probe"] == "attn-map" and "1 - lambda" in results["method"]
    assert [m["label"] for m in results["models"]] == ["transformer", "diff"]
    diff = results["metrics"]["diff"]
    lam = {k.split("=")[1]: v["value"] for k, v in diff.items() if k.startswith("lambda@layer=")}
    assert set(lam) == {"0", "1"}
    mean_one_minus_lam = np.mean([1 - v for v in lam.values()])
    for label, total in (("transformer", 1.0), ("diff", mean_one_minus_lam)):
        m = results["metrics"][label]
        assert set(breakdown(m, "depth")) == {"0", "50", "100"}
        for alloc in breakdown(m, "depth").values():  # softmax rows sum to 1; DIFF's signed rows to 1 - lambda
            assert sum(alloc[c] for c in CATEGORIES) == pytest.approx(total, abs=1e-4)
        assert m["answer"]["higher_is_better"] is True and m["noise"]["higher_is_better"] is False
    for alloc in breakdown(diff, "depth", "normalised.").values():  # the labelled alternative: divided by 1 - lambda
        assert sum(alloc[c] for c in CATEGORIES) == pytest.approx(1.0, abs=1e-4)
    for alloc in breakdown(diff, "depth", "map1.").values():
        assert sum(alloc[c] for c in CATEGORIES) == pytest.approx(1.0, abs=1e-4)
    # per layer x head cells: 2 layers x heads per model x depths
    assert len([c for c in results["cells"] if c["model"] == "diff"]) == 2 * 2 * 3
    assert {c["layer"] for c in results["cells"]} == {0, 1}
    # arrays: DIFF npz has the differential rows, each map and lambda, plus ids and spans
    rec = [json.loads(l) for l in (out / "samples.jsonl").read_text().splitlines() if '"diff"' in l][0]
    npz = np.load(out / "arrays" / f"diff__{rec['id']}.npz")
    for key in ("layer0", "layer1", "layer0_map1", "layer0_map2", "layer0_lambda", "input_ids",
                "query_positions", "span_answer", "span_needle", "span_sink"):
        assert key in npz
    R = len(npz["query_positions"])
    assert npz["layer1"].shape == (2, R, len(npz["input_ids"]))
    assert np.allclose(npz["layer1"], npz["layer1_map1"] - npz["layer1_lambda"] * npz["layer1_map2"], atol=1e-6)
    for name in results["artifacts"]["figures"]:
        assert (out / name).stat().st_size > 1000
    stems = {n.rsplit(".", 1)[0] for n in results["artifacts"]["figures"]}
    assert {"attn_profile", "attn_layer_head", "attn_pooled_window", "attn_pooled_whole", "attn_allocation"} <= stems
    table = capsys.readouterr().out
    assert "answer" in table and "noise" in table


def test_attn_map_diff2_allocates_with_each_rows_own_lambda(ckpts, tmp_path):
    out = tmp_path / "v2"
    main(["attn-map", "--ckpt", ckpts["diff2"], *ARGS, "--query", "answer", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    recs = [json.loads(l) for l in (out / "samples.jsonl").read_text().splitlines()]
    for rec in recs:
        npz = np.load(out / "arrays" / f"diff2__{rec['id']}.npz")
        n = len(npz["input_ids"])
        spans = Spans(n, tuple(npz["span_answer"]), tuple(npz["span_needle"]),
                      tuple(map(tuple, npz["span_others"])), int(npz["span_sink"][1]), int(npz["span_query"][0]))
        for L in (0, 1):
            lam = npz[f"layer{L}_lambda"]  # (h, R): one lambda per head and query row
            assert lam.shape == npz[f"layer{L}"].shape[:2] and lam.std() > 1e-3
            assert np.allclose(npz[f"layer{L}"], npz[f"layer{L}_map1"] - lam[..., None] * npz[f"layer{L}_map2"],
                               atol=1e-6)
            rows = allocation(npz[f"layer{L}"], spans.labels())  # (h, R, C)
            want = (rows / (1 - lam[..., None])).mean(axis=1)  # each row by its own 1 - lambda
            got = np.asarray(rec["per_layer_head"]["diff_norm"][L])
            assert np.allclose(got, want, atol=1e-5)
            assert np.allclose(got.sum(-1), 1.0, atol=1e-5)
            # dividing by the mean lambda instead would differ
            assert not np.allclose(got, rows.mean(axis=1) / (1 - lam.mean()), atol=1e-5)
    for alloc in breakdown(results["metrics"]["diff2"], "depth", "normalised.").values():
        assert sum(alloc[c] for c in CATEGORIES) == pytest.approx(1.0, abs=1e-4)


def test_captured_rows_in_npz_match_a_direct_capture(ckpts, tmp_path):
    from diffeval.models import Capture

    out = tmp_path / "run"
    main(["attn-map", "--ckpt", ckpts["diff"], *ARGS, "--out", str(out)])
    rec = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    npz = np.load(out / "arrays" / f"diff__{rec['id']}.npz")
    model = diffeval.load(ckpts["diff"]).model
    cap = Capture(list(npz["query_positions"]))
    with torch.no_grad():
        model(torch.from_numpy(npz["input_ids"])[None], capture=cap, logits="none")
    assert np.allclose(cap.rows[1]["map2"][0].numpy(), npz["layer1_map2"], atol=1e-6)


def test_arrays_figure_keeps_only_the_drawn_prompt(ckpts, tmp_path):
    out = tmp_path / "f"
    main(["attn-map", "--ckpt", ckpts["transformer"], *ARGS, "--arrays", "figure", "--out", str(out)])
    kept = sorted(p.name for p in (out / "arrays").glob("*.npz") if "pooled" not in p.name)
    assert kept == ["transformer__L400-d50-s0.npz"]
    assert json.loads((out / "results.json").read_text())["metrics"]["transformer"]["answer"]["n"] == 3


@pytest.mark.parametrize("argv,needle", [(["--layers", "7"], "7"), (["--query", "middle"], "middle"),
                                         (["--heads", "x"], "x"), (["--arrays", "some"], "some")])
def test_bad_attn_map_options_exit_2(ckpts, tmp_path, capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        main(["attn-map", "--ckpt", ckpts["diff"], *ARGS, *argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and needle in err
    assert not (tmp_path / "o" / "results.json").exists()
