"""`diffeval nll`: the curve against a float64 brute force from full logits, buckets, chunking,
short documents, packing, bad data."""

import json
import math

import numpy as np
import pytest
import torch

import diffeval
from diffeval.probes import nll as P
from diffeval.stats import mean_ci, t975
from diffeval.run import RunOptions, run_probe
from helpers import run_cli, saved_tiny_models

OPTS = RunOptions(device="cpu", progress=False)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return saved_tiny_models(tmp_path_factory.mktemp("nll"))


@pytest.fixture()
def corpus(tmp_path):
    folder = tmp_path / "books"
    folder.mkdir()
    rng = np.random.default_rng(0)
    words = ["river", "mill", "stone", "lantern", "orchard", "harbor", "bell", "meadow"]
    for i, n in enumerate((900, 700, 120, 800)):  # the third is shorter than the lengths used below
        text = " ".join(rng.choice(words, size=n // 6)) + ".\n"
        (folder / f"book{i}.txt").write_text(text[:n])
    return folder


def test_curve_matches_a_float64_brute_force_from_full_logits(ckpts, corpus, tmp_path):
    cfg = P.PROBE.config({"length": 300, "data": str(corpus), "positions": "1,7,64,100"})
    results = run_probe(P.PROBE, cfg, ckpts[1:], tmp_path / "r", OPTS)
    rows = [json.loads(x) for x in (tmp_path / "r" / "samples.jsonl").read_text().splitlines()]
    model = diffeval.load(ckpts[1], dtype=torch.float64).model
    tok = diffeval.load(ckpts[1]).tokenizer
    assert [r["doc"] for r in rows] == ["book0.txt", "book1.txt", "book3.txt"]  # book2 is too short
    assert results["models"][0]["notes"] == {"sequences": 3, "short_documents_skipped": 1, "packed": False}
    per_seq = []
    for r in rows:
        text = (corpus / r["doc"]).read_text()
        ids = torch.tensor([[tok.bos_id] + tok.encode(text)[:300]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids)[0], dim=-1)  # (T, V) float64, full logits
        nll = -logp[:-1].gather(1, ids[0, 1:, None])[:, 0].numpy()  # (300,)
        want = [nll[:p].mean() for p in (1, 7, 64, 100, 300)]
        assert r["positions"] == [1, 7, 64, 100, 300]
        assert r["cumulative"] == pytest.approx(want, abs=1e-5)
        assert [b[:2] + [b[3]] for b in r["buckets"]] == [[1, 1, 1], [2, 7, 6], [8, 64, 57], [65, 100, 36], [101, 300, 200]]
        assert r["buckets"][2][2] == pytest.approx(nll[7:64].mean(), abs=1e-5)
        per_seq.append(nll.mean())
    met = results["metrics"]["diff"]
    mean, ci = mean_ci(per_seq)
    assert met["nll"]["value"] == pytest.approx(mean, abs=1e-5) and met["nll"]["n"] == 3
    assert met["nll"]["ci95"] == pytest.approx(list(ci), abs=1e-5)
    assert met["ppl"]["value"] == pytest.approx(math.exp(mean), rel=1e-5)
    assert met["nll"]["higher_is_better"] is False


def test_chunk_size_does_not_change_token_nll():
    from helpers import tiny_model

    model = tiny_model("diff", vocab_size=259)
    ids = torch.randint(0, 256, (1, 333), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model.token_nll(ids, chunk=4096)
        for chunk in (1, 7, 100):
            assert torch.allclose(model.token_nll(ids, chunk=chunk), whole, atol=1e-6)


@pytest.mark.parametrize("vocab", [259, 32000, 131072])
def test_row_nll_equals_float64_within_1e6_per_token(vocab):
    from diffeval.models.decoder import row_nll

    g = torch.Generator().manual_seed(vocab)
    logits = 4 * torch.randn(64, vocab, generator=g)  # (N, V) float32
    targets = torch.randint(0, vocab, (64,), generator=g)
    logits[torch.arange(64), targets] += torch.linspace(0, 16, 64)  # NLLs from near 0 to above 16, as a model's
    want = torch.logsumexp(logits.double(), -1) - logits.double().gather(-1, targets[:, None])[:, 0]
    got = row_nll(logits, targets)
    err = (got.double() - want).abs()
    assert got.dtype == torch.float32 and (want < 16).sum() > 16
    assert err[want < 16].max() <= 1e-6  # float32's own rounding: half a unit is 4.8e-7 below 16
    assert (err / want).max() <= 1.2e-7  # and within a float32 unit beyond
    assert abs(float((got.double() - want).mean())) <= 2.5e-7  # no bias (the (B, V, T) layout: 3.7e-6 at 128K)


def test_token_nll_equals_float64_on_the_same_logits():
    from helpers import tiny_model

    model = tiny_model("transformer", vocab_size=4096)
    ids = torch.randint(0, 4096, (2, 200), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = model(ids).double()  # (2, 200, V): the float32 logits, then float64 math
        got = model.token_nll(ids, chunk=64)
    want = torch.logsumexp(logits[:, :-1], -1) - logits[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    assert got.shape == (2, 199) and (got.double() - want).abs().max() <= 1e-6


def test_curve_points_and_buckets():
    nll = np.arange(1, 11, dtype=np.float32)  # positions 1..10 carry NLL 1..10
    cum, buckets = P.curve(nll, 1, [1, 2, 4, 8, 10])
    assert cum == pytest.approx([1, 1.5, 2.5, 4.5, 5.5])
    assert buckets == [[1, 1, 1.0, 1], [2, 2, 2.0, 1], [3, 4, 3.5, 2], [5, 8, 6.5, 4], [9, 10, 9.5, 2]]
    cum, buckets = P.curve(nll[1:], 2, [2, 4, 10])  # no BOS: position 1 is not predicted
    assert cum == pytest.approx([2, 3, 6]) and buckets[0] == [1, 2, 2.0, 1]
    assert P.NllConfig(length=1000).curve_positions() == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]


def test_pack_joins_short_documents(ckpts, corpus, tmp_path):
    cfg = P.PROBE.config({"length": 500, "data": str(corpus), "pack": True})
    results = run_probe(P.PROBE, cfg, ckpts[:1], tmp_path / "p", OPTS)
    notes = results["models"][0]["notes"]
    assert notes["packed"] and notes["short_documents_skipped"] == 0
    # every sequence starts at a document: book0, book1, then book2 (120 bytes) + EOS + book3
    assert notes["sequences"] == 3
    rows = [json.loads(x) for x in (tmp_path / "p" / "samples.jsonl").read_text().splitlines()]
    assert [r["doc"] for r in rows] == ["book0.txt", "book1.txt", "book2.txt+book3.txt"]
    tok = diffeval.load(ckpts[0]).tokenizer
    packed = tok.encode((corpus / "book2.txt").read_text())
    assert rows[2]["n_tokens"] == [501]
    assert results["task"]["params"]["short_documents"] == "packed"
    assert len(packed) < 500


def test_t_quantiles_and_interval():
    assert t975(1) == 12.706 and t975(30) == 2.042
    assert t975(31) == pytest.approx(2.0395, abs=1e-3) and t975(10_000) == pytest.approx(1.96, abs=1e-3)
    mean, ci = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and ci == pytest.approx((2 - 4.303 / math.sqrt(3), 2 + 4.303 / math.sqrt(3)))
    assert mean_ci([5.0]) == (5.0, None)


def test_jsonl_documents_and_a_missing_field(ckpts, tmp_path, capsys):
    data = tmp_path / "docs.jsonl"
    data.write_text("\n".join(json.dumps({"body": "word " * 200}) for _ in range(3)) + "\n")
    out = tmp_path / "j"
    assert run_cli(["nll", "--ckpt", ckpts[0], "--data", str(data), "--text-field", "body", "--len", "256",
                    "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["metrics"]["transformer"]["nll"]["n"] == 3
    capsys.readouterr()
    assert run_cli(["nll", "--ckpt", ckpts[0], "--data", str(data), "--len", "256", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--text-field" in err and "line 1" in err and "'text'" in err


def _bad(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81bad")
    folder = tmp_path / "nothing"
    folder.mkdir()
    (folder / "notes.md").write_text("not a .txt file")
    return [([str(empty)], "fewer than"), ([str(binary)], "not UTF-8"), ([str(folder)], "no .txt files"),
            ([str(tmp_path / "gone.txt")], "no such file")]


def test_bad_data_exits_2_with_one_line(ckpts, tmp_path, capsys):
    for data, needle in _bad(tmp_path):
        out = tmp_path / "o"
        assert run_cli(["nll", "--ckpt", ckpts[0], "--data", *data, "--len", "128", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err and "--data" in err, err
        assert not out.exists()
    assert run_cli(["nll", "--ckpt", ckpts[0], "--docs", "100", "--len", "128", "--out", str(tmp_path / "o")]) == 0
    assert run_cli(["nll", "--ckpt", ckpts[0], "--len", "2k", "--out", str(tmp_path / "o2")]) == 2
    assert "--allow-beyond-max-positions" in capsys.readouterr().err


def test_beyond_the_position_limit_is_marked(ckpts, tmp_path):
    out = tmp_path / "b"
    assert run_cli(["nll", "--ckpt", ckpts[0], "--len", "1100", "--docs", "2", "--allow-beyond-max-positions",
                    "--positions", "512,1000", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    cum = {c["position"]: c for c in results["cells"] if c["kind"] == "cumulative"}
    assert set(cum) == {512, 1000, 1100}
    assert not cum[1000]["beyond_limit"] and cum[1100]["beyond_limit"]  # 1023 text positions fit
    assert results["metrics"]["transformer"]["position_limit"]["value"] == 1023
    assert (out / "nll_curve.png").stat().st_size > 10_000


@pytest.mark.parametrize("kind", ["llama", "diffllama"])
def test_hf_checkpoints_with_their_own_tokenizer_match_transformers_loss(hf_dir, kind, tmp_path):
    from hf_models import hf_model

    directory = hf_dir(kind, n_kv=2)
    text = tmp_path / "doc.txt"
    text.write_text("The river bends near the old mill, and the miller counts his sacks of grain. " * 20)
    cfg = P.PROBE.config({"length": 200, "data": str(text)})
    results = run_probe(P.PROBE, cfg, [str(directory)], tmp_path / "r", OPTS)
    tok = diffeval.load(str(directory)).tokenizer
    body = tok.encode(text.read_text())[:200]
    ids = torch.tensor([([tok.bos_id] if tok.bos_id is not None else []) + body])
    with torch.no_grad():
        loss = float(hf_model(directory)(ids, labels=ids).loss)  # mean NLL over every predicted token
    met = results["metrics"][directory.name]["nll"]
    assert met["n"] == 1 and met["value"] == pytest.approx(loss, abs=1e-4)
