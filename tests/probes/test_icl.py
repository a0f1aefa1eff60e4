"""`diffeval icl`: choice scores against direct log-likelihoods, prefix reuse, arrangements,
test-set balance, label remapping, lengths mode, bad data."""

import json

import numpy as np
import pytest
import torch

import diffeval
from diffeval.engine import Engine
from diffeval.errors import ConfigError
from diffeval.probes import icl as P
from diffeval.probes import icl_data as D
from diffeval.probes.icl_data import class_counts, split, synthetic_task
from diffeval.run import RunOptions, model_context, run_probe
from helpers import run_cli, saved_tiny_models

OPTS = RunOptions(device="cpu", progress=False)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return saved_tiny_models(tmp_path_factory.mktemp("icl"))


def _queries(ckpt, **params):
    loaded = diffeval.load(ckpt)
    cfg = P.PROBE.config({"shots": "3", "n_test": 6, "permutations": 2, **params})
    ctx = model_context("m", loaded, OPTS)
    return loaded, cfg, ctx, P.PROBE.generate(cfg, ctx).samples


def _loglik(model, prompt, cand):
    ids = torch.tensor([list(prompt) + list(cand)])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids)[0].double(), -1)
    return sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(cand))


def test_choice_scores_equal_direct_log_likelihoods_and_reuse_changes_nothing(ckpts):
    loaded, cfg, ctx, queries = _queries(ckpts[1], data="synthetic-6", shots="9")
    work = [P.PROBE.requests(cfg, q, ctx) for q in queries]
    results = {}
    for reuse in (True, False):
        got = {}
        engine = Engine(loaded.model, reuse=reuse, align=32)
        for i, out in engine.run(work):
            got.__setitem__(i, out[0])
        results[reuse] = (got, engine.counters.prefilled_tokens)
    (reused, n_reuse), (fresh, n_fresh) = results[True], results[False]
    assert n_reuse < 0.3 * n_fresh  # the block is prefilled once per (arrangement, permutation)
    for i, q in enumerate(queries[:4]):
        for j, cand in enumerate(q.candidates):
            want = _loglik(loaded.model, q.prompt, cand)
            assert reused[i][j].logprob == pytest.approx(want, abs=1e-4)
            assert fresh[i][j].logprob == reused[i][j].logprob  # aligned chunks: the same to the bit
        rec = P.PROBE.score(cfg, q, [reused[i]], ctx)
        assert rec["gold_logprob"] == pytest.approx(reused[i][q.gold].logprob, abs=1e-6)
        best = int(np.argmax([s.logprob for s in reused[i]]))
        assert rec["prediction"] == [q.shown[best]] and rec["score"] == float(best == q.gold)


def test_prompt_shows_demonstrations_then_the_query(ckpts):
    loaded, cfg, ctx, queries = _queries(ckpts[0])
    tok = loaded.tokenizer
    q = queries[0]
    text = tok.decode(list(q.prompt))
    assert text.count("input: ") == 3 + 1 and text.endswith(f"input: {q.text}\nlabel:")
    demos = text.split("\n\n")[:-1]
    assert all(d.startswith("input: ") and "\nlabel: " in d for d in demos)
    assert tok.decode(list(q.candidates[q.gold])) == f" {q.labels[q.gold]}"


def test_arrangements_are_seeded_and_distinct():
    ds = synthetic_task("synthetic-6")
    demos = list(ds.examples[::250])  # 4 of each of the 6 classes
    rng = lambda p: np.random.Generator(np.random.PCG64(p))  # noqa: E731
    for arrangement in P.ARRANGEMENTS:
        a, b = D.arrange(demos, arrangement, rng(1)), D.arrange(demos, arrangement, rng(1))
        assert a == b and sorted(map(id, a)) == sorted(map(id, demos))
        assert D.arrange(demos, arrangement, rng(2)) != a
    labels = [e.label for e in D.arrange(demos, "grouped", rng(3))]
    assert len([k for k in range(1, len(labels)) if labels[k] != labels[k - 1]]) == len(set(labels)) - 1
    alt = [e.label for e in D.arrange(demos, "alternating", rng(3))]
    counts = class_counts(demos)
    first = len(set(alt)) * min(counts.values())
    assert all(alt[k] != alt[k - 1] for k in range(1, first))


def test_test_set_is_balanced_and_disjoint_from_the_pool():
    ds = synthetic_task("synthetic-50")
    pool, test = split(ds, 120, seed=4)
    counts = class_counts(test)
    assert len(test) == 120 and max(counts.values()) - min(counts.values()) <= 1
    assert not set(map(id, pool)) & set(map(id, test)) and len(pool) + len(test) == len(ds.examples)
    assert split(ds, 120, seed=4) == (pool, test)


def test_remapped_labels_are_consistent_within_a_block(ckpts):
    loaded, cfg, ctx, queries = _queries(ckpts[0], remap_labels=True, arrangements="random,grouped")
    tok = loaded.tokenizer
    blocks: dict[tuple, tuple] = {}
    for q in queries:
        blocks.setdefault((q.arrangement, q.permutation), q.shown)
        assert q.shown == blocks[(q.arrangement, q.permutation)]
        assert all(s.isdigit() for s in q.shown) and len(set(q.shown)) == len(q.shown)
        text = tok.decode(list(q.prompt))
        for demo in text.split("\n\n")[:-1]:
            assert demo.rsplit("label: ", 1)[1] in q.shown  # demonstrations use the block's mapping
    assert len(set(blocks.values())) > 1  # another block, another mapping


def test_lengths_mode_fills_the_context_and_records_the_shots(ckpts, tmp_path):
    cfg = P.PROBE.config({"lengths": "400,900", "n_test": 4, "permutations": 2, "arrangements": "alternating"})
    results = run_probe(P.PROBE, cfg, ckpts[:1], tmp_path / "l", OPTS)
    notes = results["models"][0]["notes"]
    assert 0 < notes["shots"]["400"] < notes["shots"]["900"]
    rows = [json.loads(x) for x in (tmp_path / "l" / "samples.jsonl").read_text().splitlines()]
    for r in rows:
        assert r["n_tokens"][0] + 3 <= r["length"]  # query and the longest label still fit
        assert r["shots"] == notes["shots"][str(r["length"])]
    per = [c for c in results["cells"] if c["kind"] == "arrangement"]
    assert {c["shots"] for c in per} == set(notes["shots"].values())
    assert (tmp_path / "l" / "icl_curve.png").stat().st_size > 10_000


def test_generate_mode_scores_exact_labels(ckpts, tmp_path):
    cfg = P.PROBE.config({"shots": "2", "n_test": 3, "permutations": 1, "mode": "generate"})
    run_probe(P.PROBE, cfg, ckpts[:1], tmp_path / "g", RunOptions(device="cpu", progress=False))
    rows = [json.loads(x) for x in (tmp_path / "g" / "samples.jsonl").read_text().splitlines()]
    assert all(r["score"] == float(r["prediction"][0] == r["expected"]) for r in rows)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_bad_data_exits_2_with_one_line(ckpts, tmp_path, capsys):
    ok = [{"text": f"item {i}", "label": "ab"[i % 2]} for i in range(20)]
    cases = [
        (_write(tmp_path / "nolabel.jsonl", [{"text": "x"}] * 5), [], "--label-field"),
        (_write(tmp_path / "one.jsonl", [{"text": f"t{i}", "label": "a"} for i in range(9)]), [], "1 class"),
        (_write(tmp_path / "few.jsonl", ok), ["--test", "30"], "fewer than the 30"),
        (_write(tmp_path / "few2.jsonl", ok), ["--shots", "50"], "fewer than the 50"),
        (str(tmp_path / "gone.csv"), [], "no such file"),
    ]
    for data, extra, needle in cases:
        out = tmp_path / "o"
        code = run_cli(["icl", "--ckpt", ckpts[0], "--data", data, "--shots", "2", "--test", "4", *extra,
                        "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
        assert not out.exists()
    # a pool too small to fill the length is an error, not a silently shorter context
    code = run_cli(["icl", "--ckpt", ckpts[0], "--data", str(tmp_path / "few.jsonl"), "--len", "900", "--test", "4",
                    "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--len" in err and "cannot fill 900 tokens" in err


def test_csv_data_and_config_errors(ckpts, tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("sentence,cls\n" + "".join(f"\"item, {i}\",{'xyz'[i % 3]}\n" for i in range(30)))
    cfg = P.PROBE.config({"data": str(data), "text_field": "sentence", "label_field": "cls", "shots": "3", "n_test": 6,
                    "permutations": 1})
    results = run_probe(P.PROBE, cfg, ckpts[:1], tmp_path / "c", OPTS)
    assert results["models"][0]["notes"]["test_class_counts"] == {"x": 2, "y": 2, "z": 2}
    with pytest.raises(ConfigError) as err:
        P.PROBE.config({"shots": "4", "lengths": "1k"})
    assert err.value.field == "shots"
    with pytest.raises(ConfigError, match="once"):
        P.PROBE.config({"shots": "4", "template": "{label}: {text}"})


def test_demonstrations_are_class_balanced_and_their_coverage_recorded(ckpts, tmp_path):
    ds = synthetic_task("synthetic-6", 0)
    pool, test = split(ds, 24, 0, 16)
    rounds = D.class_rounds(pool)
    assert sorted(rounds, key=id) == sorted(pool, key=id)  # the same examples, reordered
    for k in (1, 4, 6, 16):
        counts = [n for n in class_counts(rounds[:k], ds.labels).values()]
        assert sum(n > 0 for n in counts) == min(k, 6) and max(counts) - min(counts) <= 1
        assert D.coverage(rounds[:k], test, ds.labels)["classes_shown"] == min(k, 6)
    assert D.coverage(pool[:4], test, ds.labels)["classes_shown"] == 3  # the first k of the pool left classes out
    uneven = [D.Example("a", "x")] * 5 + [D.Example("b", "y")]
    assert [e.label for e in D.class_rounds(uneven)] == ["x", "y", "x", "x", "x", "x"]
    results = run_probe(P.PROBE, P.PROBE.config({"shots": "4,8", "n_test": 6, "permutations": 1}), ckpts[:1],
                        tmp_path / "r", OPTS)
    notes = results["models"][0]["notes"]["coverage"]
    assert notes["4"] == {"classes_shown": 4, "classes": 6, "per_class": [0, 1], "queries_covered": pytest.approx(4 / 6,
                                                                                                                  abs=1e-6)}
    assert notes["8"]["classes_shown"] == 6 and notes["8"]["per_class"] == [1, 2]
    assert {c["classes_shown"] for c in results["cells"] if c["kind"] == "permutation" and c["shots"] == 8} == {6}


def test_score_by_norm_divides_by_the_labels_bytes(ckpts):
    from diffeval.requests import ChoiceScore

    loaded, cfg, ctx, queries = _queries(ckpts[0], score_by="norm")
    q = queries[0]
    assert q.label_bytes == tuple(len(f" {s}".encode()) for s in q.shown)
    # a long label with a higher sum but a lower per-byte log-likelihood loses under norm
    scores = [ChoiceScore(-1.0 * n, 1, False) for n in q.label_bytes]
    longest = int(np.argmax(q.label_bytes))
    scores[longest] = ChoiceScore(-1.5 * q.label_bytes[longest], 1, False)
    rec = P.PROBE.score(cfg, q, [scores], ctx)
    assert rec["prediction"][0] != q.shown[longest] or len(set(q.label_bytes)) == 1
    summed = P.PROBE.score(P.PROBE.config({"shots": "3", "n_test": 6, "permutations": 2}), q, [scores], ctx)
    assert summed["prediction"] == [q.shown[int(np.argmax([s.logprob for s in scores]))]]
    with pytest.raises(ConfigError, match="sum, mean, norm"):
        P.PROBE.config({"shots": "3", "score_by": "bytes"})
