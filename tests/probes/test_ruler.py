"""`ruler`: RULER's synthetic tasks regenerated and checked — exact lengths, answers where
RULER puts them, the CWE / FWE frequency profiles, VT chains, distinct keys —, the
string_match_all scorer on a table of cases, the effective-length definitions, bad input, and
a run through the command line on a zoo model."""

import json
from dataclasses import replace
import re
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from diffeval.checkpoints import load
from diffeval.errors import ConfigError, UsageError
from diffeval.probes import effective as E
from diffeval.probes import ruler as P
from diffeval.probes import ruler_tasks as T
from diffeval.run import RunOptions, model_context
from helpers import run_cli

OPTS = RunOptions(device="cpu", progress=False)


@pytest.fixture(scope="module")
def ctx():
    return model_context("transformer-tiny", load("zoo:transformer-tiny"), OPTS)


@pytest.fixture(scope="module")
def samples(ctx):
    return P.PROBE.generate(P.PROBE.config({"lengths": "512,896", "samples": 2}), ctx)


def _text(ctx, s) -> str:
    return ctx.tokenizer.decode(list(s.prompt))


def test_every_prompt_has_exactly_the_requested_length(samples):
    assert len(samples) == 2 * 2 * len(T.SYNTHETIC) and len({s.id for s in samples}) == len(samples)
    assert {s.task for s in samples} == set(T.SYNTHETIC)
    for s in samples:
        assert len(s.prompt) + T.TASKS[s.task].budget == s.length, s.id  # RULER counts the budget in
        assert s.budget == T.TASKS[s.task].budget and s.to_record()["n_tokens"] == [len(s.prompt)]


@pytest.mark.parametrize("task", [t for t in T.SYNTHETIC if t.startswith("niah")])
def test_niah_needles_hold_the_answers_once_with_rulers_wording(ctx, samples, task):
    cfg = T.TASKS[task].niah
    for s in (s for s in samples if s.task == task):
        text = _text(ctx, s)
        keys = [k.strip() for k in re.split(r",(?: and)? ", s.info["query"])]
        assert len(keys) == cfg.n_queries and len(set(keys)) == len(keys)
        assert len(s.answers) == cfg.n_queries * cfg.n_values and len(set(s.answers)) == len(s.answers)
        for a in s.answers:
            assert text.count(a) == 1 and any(f"for {k} is: {a}." in text for k in keys)
        needles = re.findall(r"One of the special magic (\w+) for (\S+) is: (\S+)\.", text)
        assert needles and all(t == cfg.values for t, _, _ in needles)
        if cfg.haystack != "needle":  # the placed needles only: n_keys distinct keys
            assert len(needles) == cfg.n_keys * cfg.n_values and len({k for _, k, _ in needles}) == cfg.n_keys
        else:  # distractor needles all around, the asked key once
            assert len(needles) >= 3 and [k for _, k, _ in needles].count(keys[0]) == 1
        if cfg.n_queries * cfg.n_values == 1:
            assert text.startswith(f"A special magic {cfg.values[:-1]} is hidden")
            assert text.endswith("mentioned in the provided text is")
        else:
            assert text.startswith(f"Some special magic {cfg.values} are hidden")
            assert text.endswith(f"The special magic {cfg.values} for {s.info['query']} mentioned in the provided text are")
        if cfg.keys == "uuids":
            assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", keys[0])
        if task == "niah_single_1":
            assert "The grass is green." in text


def _long(ctx, task, length, seed=1):
    """A prompt past the zoo's position limit (RULER's long settings), built without its check."""
    p = T.generate_prompt(T.TASKS[task], ctx.tokenizer, ctx.prompt_format, None, length, np.random.SeedSequence(seed))
    budget = T.TASKS[task].budget
    return P.Sample(f"{task}-L{length + budget}-s0", task, length + budget, 0, p.ids, p.answers, budget, p.info)


def test_vt_is_one_chain_of_four_hops_in_order(ctx, samples):
    long = _long(ctx, "vt", 1024)
    assert long.info["n_fewshot"] == 1 and all(s.info["n_fewshot"] == 0 for s in samples if s.task == "vt")
    shot, main = _text(ctx, long).rsplit(T.VT_HEAD, 1)
    solved = re.search(r"they are: ([A-Z]{3}) ([A-Z]{3}) ([A-Z]{3}) ([A-Z]{3}) ([A-Z]{3})\n$", shot)
    assert solved and f"VAR {solved.group(2)} = VAR {solved.group(1)}." in shot and long.info["query"] in main
    for s in [*(s for s in samples if s.task == "vt"), long]:
        text, names, value = _text(ctx, s), s.answers, s.info["query"]
        assert len(names) == 5 and len(set(names)) == 5 and all(re.fullmatch(r"[A-Z]{5}", n) for n in names)
        lines = [f"VAR {names[0]} = {value}."] + [f"VAR {names[j + 1]} = VAR {names[j]}." for j in range(4)]
        at = [text.index(line) for line in lines]
        assert at == sorted(at) and all(text.count(line) == 1 for line in lines)
        assert text.count(value) == 3 and len(s.prompt) == s.length - s.budget  # its line, the question, the answer prefix
        assert text.endswith(f"5 variables are assigned the value {value}, they are: ")


def test_cwe_profile_is_rulers(ctx, samples):
    long = _long(ctx, "cwe", 4096)
    assert len(long.prompt) == 4096 and long.info["repeats"] == [30, 3] and long.info["n_fewshot"] == 1
    shot = _text(ctx, long).split(T.CWE_HEAD)[1]
    assert shot.count(T.CWE_ANSWER) == 1 and re.search(r"are: 1\. \w+ 2\. \w+", shot)
    for s in [*(s for s in samples if s.task == "cwe"), long]:
        text = _text(ctx, s)
        listed = text.split(T.CWE_HEAD)[-1].split("\nQuestion:")[0]
        entries = re.findall(r"(\d+)\. (\w+)", listed)
        assert [int(i) for i, _ in entries] == list(range(1, len(entries) + 1))
        counts = Counter(w for _, w in entries)
        common, rare = s.info["repeats"]
        assert len(s.answers) == 10 and set(s.answers) <= set(counts)
        assert all(counts[w] == common for w in s.answers)
        assert all(c == rare for w, c in counts.items() if w not in s.answers) and common > rare
        assert len(counts) == 10 + s.info["n_rare"]
        assert text.endswith(T.CWE_ANSWER.strip())
        if s.length == 896:  # RULER's counts below 4K; at 512 they do not fit and common words repeat less
            assert s.info["repeats"] == [6, 1]
        elif s.length == 512:
            assert 2 <= common < 6


def test_fwe_counts_follow_zipf_and_the_answer_is_ranks_two_to_four(ctx, samples):
    for s in (s for s in samples if s.task == "fwe"):
        text = _text(ctx, s)
        coded = text[len(T.FWE_HEAD):].split("\nQuestion:")[0].split()
        counts = Counter(coded)
        expected = T.fwe_counts(s.info["n_words"], (s.length - s.budget) // 50)  # RULER: the prompt's length
        assert counts[s.answers[0]] == expected[1] and counts[s.answers[2]] == expected[3]
        top = [w for w, _ in counts.most_common() if w != T.FWE_NOISE][:3]
        assert set(top) == set(s.answers)
        others = [c for w, c in counts.items() if w != T.FWE_NOISE and w not in s.answers]
        assert min(counts[a] for a in s.answers) > max(others, default=0)
        assert counts[T.FWE_NOISE] >= expected[0]  # the noise word also closes the length


def test_fwe_counts_are_zipf_and_capped_only_where_rounding_ties_the_answer():
    zipf = [int(5000 * k ** -2.0 / (np.pi ** 2 / 6)) for k in range(1, 81)]
    assert T.fwe_counts(5000, 80) == zipf  # RULER's counts untouched at real lengths
    short = T.fwe_counts(54, 9)  # 54 / zeta(2) / 16 and / 25 both round to 2
    assert short[:4] == [32, 8, 3, 2] and max(short[4:]) == 1


def test_samples_are_seeded(ctx, samples):
    again = P.PROBE.generate(P.PROBE.config({"lengths": "512,896", "samples": 2}), ctx)
    assert [(s.id, s.prompt) for s in again] == [(s.id, s.prompt) for s in samples]
    other = P.PROBE.generate(P.PROBE.config({"lengths": "512", "samples": 2, "seed": 1, "tasks": "vt,fwe"}), ctx)
    mine = {s.id: s.prompt for s in samples}
    assert all(s.prompt != mine[s.id] for s in other)


@pytest.mark.parametrize("prediction, answers, score", [
    (" 1234567.", ("1234567",), 1.0),
    (" 123456", ("1234567",), 0.0),
    (" 1111111 and 2222222", ("1111111", "2222222", "3333333", "4444444"), 0.5),
    (" abcde, FGHIJ, klmno", ("ABCDE", "FGHIJ", "KLMNO", "PQRST", "UVWXY"), 0.6),
    (" 1. apple 2. pear", ("apple", "pear", "plum"), 2 / 3),
    ("", ("apple",), 0.0),
])
def test_score_is_rulers_string_match_all(prediction, answers, score):
    tok = SimpleNamespace(decode=lambda ids: prediction)
    s = P.Sample("x", "niah_multivalue", 512, 0, (1, 2), answers, 128, {})
    record = P.PROBE.score(P.PROBE.config({"lengths": "512"}), s, [[]], SimpleNamespace(tokenizer=tok, decode="ruler"))
    assert record["score"] == pytest.approx(score) and record["all_correct"] == (score == 1.0)


def _cells(table: dict, n: int = 20, depths: dict | None = None) -> dict:
    """{(task, length): percent} -> exact cells of n samples (k of them scored 1)."""
    out = {}
    for key, pct in table.items():
        k = round(pct * n / 100)
        d = None if depths is None or key[0] not in depths else np.asarray(depths[key[0]](n), dtype=float)
        out[key] = E.Cell(np.array([1.0] * k + [0.0] * (n - k)), d)
    return out


def test_effective_lengths_under_the_three_definitions():
    # averages 95, 87.5, 82.5, 70; 85% of 95 = 80.75
    table = {("a", 4096): 100, ("b", 4096): 90, ("a", 8192): 95, ("b", 8192): 80, ("a", 16384): 85,
             ("b", 16384): 80, ("a", 32768): 70, ("b", 32768): 70}
    eff = E.effective(_cells(table), 85.6, replicates=200)
    assert eff["avg"] == pytest.approx([95.0, 87.5, 82.5, 70.0])
    assert (eff["ruler"], eff["relative"], eff["strict"]) == (8192, 16384, 4096)
    eff = E.effective(_cells(table), 96.0, replicates=200)
    assert (eff["ruler"], eff["relative"], eff["strict"]) == (0, 16384, 0)
    dip = {("a", 1): 90, ("a", 2): 50, ("a", 3): 90}  # a length that passes after one that fails does not count
    eff = E.effective(_cells(dip), 85.6, replicates=200)
    assert (eff["ruler"], eff["relative"], eff["strict"]) == (1, 1, 1)
    w = E.weighted_averages([100.0, 0.0])
    assert w["increasing"] == pytest.approx(100 / 3) and w["decreasing"] == pytest.approx(200 / 3)


def test_strict_effective_length_fails_on_a_depth_region_the_task_average_hides():
    # every needle sample in the last fifth of the context fails: the task mean (80%) and the
    # average pass 75, but the deepest bin scores 0
    table = {("niah", 1024): 100, ("niah", 2048): 80}
    depths = {"niah": lambda n: np.linspace(0, 0.99, n)}
    cells = _cells(table, 20, depths)
    cells[("niah", 2048)] = E.Cell(np.array([1.0] * 16 + [0.0] * 4), np.linspace(0, 0.99, 20))
    eff = E.effective(cells, 75.0, replicates=200)
    assert (eff["ruler"], eff["strict"]) == (2048, 1024)


def test_bootstrap_intervals_cover_the_estimate_narrow_with_samples_and_repeat():
    table = {("a", 1): 100, ("a", 2): 90, ("a", 4): 85, ("a", 8): 40}
    small = E.effective(_cells(table, 10), 85.6, seed=3)
    big = E.effective(_cells(table, 400), 85.6, seed=3)
    assert small == E.effective(_cells(table, 10), 85.6, seed=3)  # seeded: reproducible
    for eff in (small, big):
        for d in E.METRICS:
            lo, hi = eff[d + "_ci95"]
            assert lo <= eff[d] <= hi and {lo, hi} <= {0, 1, 2, 4, 8}
    for d in E.METRICS:  # more samples: a narrower interval inside the wider one
        (a, b), (c, e) = small[d + "_ci95"], big[d + "_ci95"]
        assert a <= c and e <= b and e - c < b - a
    # 85% at length 4 sits on the threshold's edge: with 10 samples the interval reaches both sides
    assert small["ruler_ci95"][0] <= 2 and small["ruler_ci95"][1] == 4
    assert E.effective(_cells({("a", 1): 100, ("a", 2): 100}, 10), 85.6)["ruler_ci95"] == [2, 2]


@pytest.mark.parametrize("params, field", [({"tasks": "niah_single_1,nope"}, "tasks"), ({"tasks": ""}, "tasks"),
                                           ({"tasks": "vt,vt"}, "tasks"), ({"threshold": 101}, "threshold"),
                                           ({"threshold": -0.5}, "threshold"), ({"threshold": "high"}, "threshold"),
                                           ({"samples": 0}, "samples")])
def test_bad_parameters_name_the_field(params, field):
    with pytest.raises(ConfigError) as err:
        P.PROBE.config({"lengths": "512", **params})
    assert err.value.field == field


def test_a_prompt_and_its_budget_must_fit_the_position_limit(ctx):
    with pytest.raises(ConfigError) as err:  # the zoo's 1088 positions: 1100 (prompt and budget) does not fit
        P.PROBE.generate(P.PROBE.config({"lengths": "1100", "samples": 1, "tasks": "niah_single_1"}), ctx)
    assert err.value.field == "lengths" and "1100" in str(err.value)
    with pytest.raises(ConfigError) as err:  # a larger decode budget than RULER's must fit as well
        P.PROBE.generate(P.PROBE.config({"lengths": "1024", "samples": 1, "tasks": "vt"}),
                         replace(ctx, max_new_tokens=100))
    assert err.value.field == "lengths" and "1094" in str(err.value)
    with pytest.raises(ConfigError) as err:
        P.PROBE.generate(P.PROBE.config({"lengths": "100", "samples": 1, "tasks": "cwe"}), ctx)
    assert "generation budget" in str(err.value)
    with pytest.raises(UsageError, match="--len 150: niah_single_1 gets 22 prompt tokens"):
        P.PROBE.generate(P.PROBE.config({"lengths": "150", "samples": 1, "tasks": "niah_single_1"}), ctx)


def test_runs_from_the_command_line_and_refuses_bad_input(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["ruler", "--ckpt", "zoo:transformer-tiny", "--len", "512", "--samples", "2", "--max-new-tokens", "4",
            "--out", str(out)]
    assert run_cli(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["probe"] == "ruler" and results["task"]["params"]["tasks"] == list(T.SYNTHETIC)
    assert sorted((c["task"], c["length"]) for c in results["cells"]) == sorted((t, 512) for t in T.SYNTHETIC)
    met = results["metrics"]["transformer-tiny"]
    assert {"effective_length", "effective_length@definition=relative", "effective_length@definition=strict",
            "score@length=512", "score_wavg@weights=increasing"} <= set(met)
    assert met["effective_length"]["threshold"] == 85.6
    assert results["artifacts"]["figures"] == ["ruler_heatmap.png", "ruler_heatmap.pdf", "ruler_curve.png",
                                               "ruler_curve.pdf"]
    assert len(met["effective_length"]["ci95"]) == 2 and len(met["score@length=512"]["ci95"]) == 2
    assert (out / "ruler_heatmap.png").stat().st_size > 1000
    assert "RULER score (0-100) by task and length" in capsys.readouterr().out
    for bad, flag in ((["--tasks", "niah_single_9"], "--tasks"), (["--threshold", "120"], "--threshold"),
                      (["--tasks", "qa_1"], "--qa-data")):
        assert run_cli(["ruler", "--ckpt", "zoo:transformer-tiny", *bad, "--out", str(tmp_path / "b")]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and flag in err and not (tmp_path / "b").exists()


def test_chat_format_keeps_exact_lengths_and_puts_the_answer_prefix_after_the_assistant_header(ctx):

    from diffeval.probes.prompts import PromptFormat

    chat = replace(ctx, prompt_format=PromptFormat("chat", head="<user>\n", tail="\n<assistant>\n"))
    cfg = P.PROBE.config({"lengths": "512", "samples": 1, "tasks": "niah_single_2,vt,cwe,fwe"})
    for s in P.PROBE.generate(cfg, chat):
        text = _text(ctx, s)
        assert len(s.prompt) == 512 - s.budget and text.startswith("<user>\n")
        assert re.search(r"\?\n<assistant>\n(The special|Answer: )", text) or "above.\n<assistant>\nAnswer:" in text


def _qa_file(path, n=12):
    rows = [{"query": f"Which river runs past the town of Eldham {i}?", "outputs": [f"the Vell{i}", f"Vell{i}"],
             "context": [f"Eldham {i} is a small market town. The river Vell{i} runs past its old mill."]}
            for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_qa_puts_the_gold_document_among_distractors_at_the_exact_length(ctx, tmp_path):
    data = _qa_file(tmp_path / "qa.jsonl")
    cfg = P.PROBE.config({"lengths": "512,896", "samples": 2, "tasks": "qa_1", "qa_data": str(data)})
    assert cfg.to_dict()["suite"] == "synthetic and QA" and P.PROBE.data(cfg)["qa_data"]["n_files"] == 1
    for s in P.PROBE.generate(cfg, ctx):
        text, i = _text(ctx, s), s.index
        assert len(s.prompt) == s.length - 32 and s.answers == (f"the Vell{i}", f"Vell{i}")
        assert text.count(f"The river Vell{i} runs past its old mill.") == 1 and text.count("Document ") >= 3
        assert text.startswith(T.QA_HEAD) and text.endswith(f"Question: {s.info['query']} Answer:")
    tok = SimpleNamespace(decode=lambda ids: " Vell0, I think")
    s = P.Sample("x", "qa_1", 512, 0, (1,), ("the Vell0", "Vell0"), 32, {})  # string_match_part: any answer
    assert P.PROBE.score(cfg, s, [[]], SimpleNamespace(tokenizer=tok, decode="ruler"))["score"] == 1.0
    assert P.PROBE.config({"lengths": "512"}).to_dict()["suite"] == "synthetic (no QA data)"


def test_qa_runs_from_the_command_line(tmp_path):
    data, out = _qa_file(tmp_path / "qa.jsonl"), tmp_path / "run"
    assert run_cli(["ruler", "--ckpt", "zoo:transformer-tiny", "--len", "512", "--samples", "1", "--tasks", "qa_1",
                    "--qa-data", str(data), "--max-new-tokens", "4", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [c["task"] for c in results["cells"]] == ["qa_1"] and results["data"]["qa_data"]["n_files"] == 1


def test_qa_data_is_checked(ctx, tmp_path):
    for params in ({"tasks": "qa_1"}, {"tasks": "qa_2", "qa_data": str(_qa_file(tmp_path / "a.jsonl"))},
                   {"tasks": "qa_1", "qa_data": str(tmp_path / "missing.jsonl")}):
        with pytest.raises(ConfigError) as err:
            P.PROBE.config({"lengths": "512", **params})
        assert err.value.field == "qa_data"
    bad = tmp_path / "bad.jsonl"
    for text in ('{"query": "q?", "outputs": []}\n{"query": "r?", "outputs": ["a"], "context": ["d"]}\n', "not json\n"):
        bad.write_text(text)
        with pytest.raises(ConfigError) as err:
            P.PROBE.generate(P.PROBE.config({"lengths": "512", "tasks": "qa_1", "qa_data": str(bad)}), ctx)
        assert err.value.field == "qa_data" and "line 1" in str(err.value)


@pytest.mark.parametrize("length", [5, 6, 40, 333, 1000, 4097])
def test_word_list_fit_finds_the_largest_count_and_pads_to_the_exact_length(length):
    def build(n, pad):  # a step-wise cost, as zipf counts give, plus one token per pad character
        return tuple(range(5 + 3 * n + n // 7 + 2 * (n // 50) + len(pad)))

    best = max(n for n in range(length + 1) if len(build(n, "")) <= length)
    assert T.largest_count(build, length, 0, "toy") == best
    fit = T.fit_count(build, length, 0, "toy")
    assert fit.n == best and len(fit.ids) == length and set(fit.pad) <= {"\n"}
    with pytest.raises(UsageError, match="too short"):
        T.largest_count(build, 4, 0, "toy")


def test_compare_puts_two_ruler_runs_side_by_side(tmp_path, capsys):
    runs = []
    for seed in (0, 1):
        runs.append(tmp_path / f"s{seed}")
        assert run_cli(["ruler", "--ckpt", "zoo:sha-tiny", "--len", "512", "--samples", "1", "--tasks", "vt,cwe",
                        "--seed", str(seed), "--max-new-tokens", "4", "--out", str(runs[-1])]) == 0
    capsys.readouterr()
    assert run_cli(["compare", *map(str, runs), "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "effective_length" in out and "s1/sha-tiny" in out
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| score |" in report and "| effective_length |" in report
    assert "task parameters differ from s0 (seed)" in report  # another seed: said, not hidden


def test_the_ruler_table_renders_to_markdown_and_latex_and_a_check_reads_the_run(tmp_path):
    from diffeval.report import check as C
    from diffeval.report.tables import latex, markdown

    out = tmp_path / "run"
    assert run_cli(["ruler", "--ckpt", "zoo:transformer-tiny", "--len", "512", "--samples", "1", "--tasks",
                    "niah_single_1,vt", "--max-new-tokens", "4", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    table = P.PROBE.views[-1].build(results)
    md, tex = markdown(table), latex(table)
    for name in ("niah\\_single\\_1", "vt", "avg"):
        assert name in tex and name.replace("\\", "") in md
    assert "effective length RULER none (95% none-none)" in md and "\\begin{tabular}" in tex
    met = results["metrics"]["transformer-tiny"]
    reference = {"metrics": {"ruler": {"transformer-tiny": {
        "effective_length": {**met["effective_length"], "value": 512, "ci95": [512, 512]},
        "score@task=vt": met["score@task=vt"]}}}}
    rows = {r.metric: r.status for r in C.compare(reference, {"ruler": results})}
    assert rows == {"effective_length": "regressed", "score@task=vt": "ok"}


def test_vt_hops_and_chains_are_parameters_and_too_many_for_the_length_are_refused(ctx, tmp_path, capsys):
    cfg = P.PROBE.config({"lengths": "896", "samples": 2, "tasks": "vt", "vt_hops": 7, "vt_chains": 3})
    for s in P.PROBE.generate(cfg, ctx):
        text, names, value = _text(ctx, s), s.answers, s.info["query"]
        assert (s.info["hops"], s.info["chains"]) == (7, 3) and len(names) == 8 and len(set(names)) == 8
        lines = [f"VAR {names[0]} = {value}."] + [f"VAR {names[j + 1]} = VAR {names[j]}." for j in range(7)]
        at = [text.index(line) for line in lines]
        assert at == sorted(at) and all(text.count(line) == 1 for line in lines)
        assert len(re.findall(r"VAR [A-Z]{5} = \d+\.", text)) == 3  # three chains, one asked
        assert text.endswith(f"8 variables are assigned the value {value}, they are: ")
    for params in ({"vt_hops": 0}, {"vt_chains": 101}, {"vt_hops": "many"}):
        with pytest.raises(ConfigError) as err:
            P.PROBE.config({"lengths": "512", "tasks": "vt", **params})
        assert err.value.field == next(iter(params))
    out = tmp_path / "b"
    assert run_cli(["ruler", "--ckpt", "zoo:transformer-tiny", "--len", "512", "--tasks", "vt", "--vt-hops", "200",
                    "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--vt-hops" in err and not out.exists()
