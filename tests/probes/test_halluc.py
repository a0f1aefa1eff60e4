"""`diffeval halluc`: outcome labels, the generator's guarantees, summaries' support, the
judge against a local server (verdicts, cache, a timeout, a malformed reply), bad data."""

import json
from pathlib import Path
import time

import pytest

import diffeval
from diffeval.probes import grounding as G
from diffeval.probes import halluc as P
from diffeval.probes import qa as QA
from diffeval.probes.judge import Judge
from diffeval.run import RunOptions, model_context, run_probe
from helpers import LoopbackServer, copy_zoo_model, run_cli, saved_tiny_models

OPTS = RunOptions(device="cpu", progress=False)
CONTEXT = "Notes. The magic number for brave-falcon is 1234567. The magic number for bold-falcon is 7654321. Paris is far."
# The committed table of labelled answers: one context, each question kind's answers and values.
TABLE = Path(__file__).parent.parent / "fixtures" / "halluc_labels" / "answers.jsonl"
TABLE_CONTEXT = ("Notes. The magic number for brave-falcon is 1234567. The magic number for calm-otter is 5550001. "
                 "The magic number for bold-otter is 7654321. Paris is far.")
TABLE_KINDS = {  # kind -> (asked key, expected answers, the look-alike key's value, other keys' values)
    "answerable": ("brave-falcon", ("1234567",), (), ("5550001", "7654321")),
    "confusable": ("calm-otter", ("5550001",), ("7654321",), ("1234567", "7654321")),
    "unanswerable": ("tiny-heron", (), (), ("1234567", "5550001", "7654321")),
}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return saved_tiny_models(tmp_path_factory.mktemp("hal"))


def _table():
    return [json.loads(line) for line in TABLE.read_text().splitlines()]


@pytest.mark.parametrize("row", _table(), ids=lambda r: r["note"])
def test_outcome_labels_on_the_committed_table(row):
    key, answers, lookalike, others = TABLE_KINDS[row["kind"]]
    got = G.outcome(row["prediction"], answers, others, "unknown", TABLE_CONTEXT, key, lookalike)
    assert got == row["want"], row["note"]


def test_the_table_covers_every_outcome_and_kind():
    rows = _table()
    assert {r["want"] for r in rows} == set(G.OUTCOMES) and {r["kind"] for r in rows} == set(TABLE_KINDS)


@pytest.mark.parametrize("prediction,answers,others,want", [
    (" Paris", ("1234567",), (), "confused"),  # user data: supported but not the answer
    (" Berlin", ("1234567",), (), "invented"),
])
def test_user_data_labels(prediction, answers, others, want):
    assert G.outcome(prediction, answers, others, "unknown", CONTEXT, "What is the magic number for brave-falcon?") == want


def test_echoing_the_question_is_not_hallucination():
    q = "What is the magic number for tiny-heron?"
    assert G.outcome("The magic number for tiny-heron is unknown.", (), ("1234567",), "unknown", CONTEXT, q) == "abstained"


def test_headline_is_the_papers_sense_with_outcomes_as_breakdown():
    answers = [{"kind": "answerable", "outcome": "correct"}, {"kind": "answerable", "outcome": "confused"},
               {"kind": "confusable", "outcome": "lookalike"}, {"kind": "confusable", "outcome": "invented"},
               {"kind": "unanswerable", "outcome": "abstained"}, {"kind": "unanswerable", "outcome": "confused"}]
    _, met = P._summary("m", answers)
    assert met["accuracy"]["value"] == pytest.approx(2 / 6, abs=1e-6)
    assert met["paper_hallucination_rate"]["value"] == pytest.approx(4 / 6, abs=1e-6)
    assert met["paper_hallucination_rate"]["higher_is_better"] is False
    assert met["outcome_rate@outcome=invented"]["value"] == pytest.approx(1 / 6, abs=1e-6)
    assert met["outcome_rate@outcome=lookalike"]["value"] == pytest.approx(1 / 6, abs=1e-6)
    assert met["lookalike@kind=confusable"]["value"] == 0.5 and met["confusion@kind=unanswerable"]["value"] == 0.5
    assert "hallucination_rate" not in met


def test_summary_support_lists_unsupported_units():
    score, missing = G.support("The magic number for brave-falcon is 1234567, said Napoleon in Berlin.", CONTEXT)
    assert missing == ["Napoleon", "Berlin"]
    assert score == pytest.approx(1 - 2 / len(G.content_units("The magic number for brave-falcon is 1234567, "
                                                                 "said Napoleon in Berlin.")))


def test_generator_guarantees(ckpts):
    loaded = diffeval.load(ckpts[0])
    cfg = P.PROBE.config({"lengths": "400,600", "samples": 3, "n_facts": 5})
    samples = P.PROBE.generate(cfg, model_context("m", loaded, OPTS))
    tok = loaded.tokenizer
    assert len(samples) == 6
    for s in samples:
        assert len(s.prompts[0]) == s.length  # exact length
        assert s.kinds == QA.KINDS
        facts = dict(s.facts)
        asked, confusable, absent = s.questions
        sentence = f"The magic number for {asked} is {facts[asked]}."
        assert s.context.count(sentence) == 1 and s.context.count(facts[asked]) == 1
        assert absent not in s.context.lower() and absent not in facts
        twins = [k for k in facts if k != confusable and k.split("-")[1] == confusable.split("-")[1]]
        assert len(twins) == 1 and facts[twins[0]] != facts[confusable]  # differs only in the key
        assert s.lookalike == ((), (facts[twins[0]],), ())
        assert all(k.split("-")[1] != asked.split("-")[1] for k in facts if k != asked)
        assert all(k.split("-")[1] != absent.split("-")[1] for k in facts)
        for p, q in zip(s.prompts, s.questions):
            assert tok.decode(list(p)).endswith(f"Answer: The magic number for {q} is")


def test_chat_questions_end_at_the_assistant_header(tmp_path):
    root = copy_zoo_model("transformer-tiny", tmp_path / "chat")
    cfg_path = root / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    cfg_path.write_text(json.dumps(cfg))
    loaded = diffeval.load(str(root))
    ctx = model_context("m", loaded, RunOptions(device="cpu", progress=False, prompt_format="chat"))
    samples = P.PROBE.generate(P.PROBE.config({"lengths": "400", "samples": 2, "n_facts": 4}), ctx)
    for s in samples:
        assert len(s.prompts[0]) == 400
        for p, q in zip(s.prompts, s.questions):
            text = loaded.tokenizer.decode(list(p))
            assert text.endswith(f'for {q}? If the text does not say, answer "unknown".<|end|>\n<|assistant|>\n')
    assert all(r.stop_text == "\n\n" for r in P.PROBE.requests(P.PROBE.config({}), samples[0], ctx))


class _Server(LoopbackServer):
    """A loopback OpenAI-compatible endpoint: answers from a script of replies."""

    def __init__(self, replies):
        self.replies, self.calls = list(replies), 0

        def post(h):
            self.calls += 1
            body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
            assert body["messages"][0]["role"] == "user"
            reply = self.replies.pop(0) if self.replies else "yes"
            if reply == "sleep":
                time.sleep(1.5)
                reply = "yes"
            data = reply.encode() if reply.startswith("{") or reply == "garbage" else json.dumps(
                {"choices": [{"message": {"content": reply}}]}).encode()
            h.send_response(200)  # a client that gave up waiting (the timeout case) is ignored
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)

        super().__init__(post)


def test_judge_verdicts_cache_timeout_and_malformed_reply(tmp_path):
    server = _Server(["Yes.", "no", "sleep", "yes", "garbage", "garbage", "maybe", "{}"])
    try:
        judge = Judge(server.url, "judge-1", timeout=0.5, retries=2, backoff=0.01, cache_dir=tmp_path)
        assert judge.verdict("ctx", "q?", "a1") == {"free": True}
        assert judge.verdict("ctx", "q?", "a2") == {"free": False}
        assert judge.verdict("ctx", "q?", "a1") == {"free": True} and server.calls == 2  # cached
        assert judge.verdict("ctx", "q?", "slow") == {"free": True}  # timed out once, then answered
        bad = judge.verdict("ctx", "q?", "a3")
        assert bad == {"error": "malformed reply after 2 attempt(s)"}
        assert "error" in judge.verdict("ctx", None, "summary text")  # "maybe", then {}
        assert not any("error" in json.loads(p.read_text()) for p in tmp_path.glob("*.json"))  # errors not cached
    finally:
        server.close()


def test_judge_end_to_end_counts_errors_apart(ckpts, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFEVAL_CACHE_DIR", str(tmp_path / "cache"))  # a verdict cache of its own
    server = _Server(["yes", "no", "garbage", "garbage", "garbage"] + ["yes"] * 20)
    try:
        cfg = P.PROBE.config({"lengths": "500", "samples": 2, "n_facts": 4, "judge_url": server.url,
                        "judge_model": "j", "judge_timeout": 5})
        results = run_probe(P.PROBE, cfg, ckpts[:1], tmp_path / "r", RunOptions(device="cpu", progress=False))
    finally:
        server.close()
    met = results["metrics"]["transformer"]
    assert met["judge_errors"]["value"] == 1 and met["judge_free_rate"]["n"] == 5
    assert met["judge_free_rate"]["value"] == pytest.approx(4 / 5)


def test_user_jsonl_qa_and_summaries(ckpts, tmp_path):
    data = tmp_path / "qa.jsonl"
    rows = [{"context": "The bridge opened in 1932 in Sydney.", "question": "When did the bridge open?", "answers": ["1932"]},
            {"context": "The bridge opened in 1932.", "question": "Who built it?", "answerable": False},
            {"context": "A long report about rivers and mills. " * 5}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = run_probe(P.PROBE, P.PROBE.config({"data": str(data)}), ckpts[:1], tmp_path / "u", OPTS)
    kinds = {c["kind"] for c in results["cells"]}
    assert kinds == {"answerable", "unanswerable", "summary"}
    assert "support@kind=summary" in results["metrics"]["transformer"]
    rec = [json.loads(x) for x in (tmp_path / "u" / "samples.jsonl").read_text().splitlines()][2]
    assert rec["answers"][0]["outcome"] is None and 0 <= rec["answers"][0]["support"] <= 1


def test_bad_data_exits_2_with_one_line(ckpts, tmp_path, capsys):
    cases = [({"question": "q"}, "no 'context'"), ({"context": "c", "question": "q", "answers": "x"}, "list of strings"),
             ({"context": "c", "question": "q", "answerable": True}, "needs 'answers'")]
    for row, needle in cases:
        data = tmp_path / "bad.jsonl"
        data.write_text(json.dumps(row) + "\n")
        assert run_cli(["halluc", "--ckpt", ckpts[0], "--data", str(data), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err and "--data" in err
        assert not (tmp_path / "o").exists()
    (tmp_path / "empty.jsonl").write_text("")
    assert run_cli(["halluc", "--ckpt", ckpts[0], "--data", str(tmp_path / "empty.jsonl")]) == 2
    assert "no examples" in capsys.readouterr().err
    assert run_cli(["halluc", "--ckpt", ckpts[0], "--judge-url", "http://127.0.0.1:9"]) == 2
    assert "--judge-model" in capsys.readouterr().err
