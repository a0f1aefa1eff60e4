"""Prompt formats: chat templates rendered around the user text (exact lengths kept), clear
errors without one; `ruler` decoding; a Hugging Face checkpoint without tokenizer.json."""

import json
import shutil

import pytest

import diffeval
from diffeval.errors import ConfigError
from diffeval.probes import needle as N
from diffeval.probes import retrieval as R
from diffeval.probes.scoring import answer_text
from diffeval.probes.prompts import prompt_format, split_chat_template
from helpers import copy_zoo_model, run_cli

# A chat template in the Hugging Face form (jinja2), written for these tests.
TEMPLATE = ("{{ bos_token }}{% if messages[0]['role'] != 'system' %}<|system|>\nToday is {{ strftime_now('%d %b %Y') }}."
            "<|end|>\n{% endif %}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """The shipped transformer-tiny with a chat template added to its tokenizer_config.json."""
    root = tmp_path_factory.mktemp("chat") / "tiny-chat"
    copy_zoo_model("transformer-tiny", root)
    cfg = json.loads((root / "tokenizer_config.json").read_text())
    cfg["chat_template"] = TEMPLATE
    (root / "tokenizer_config.json").write_text(json.dumps(cfg))
    return root


def test_template_splits_around_the_user_message_reproducibly():
    head, tail = split_chat_template(TEMPLATE)
    assert head == "<|system|>\nToday is 01 Jan 2025.<|end|>\n<|user|>\n"  # no BOS text: BOS is an id
    assert tail == "<|end|>\n<|assistant|>\n"
    with pytest.raises(ConfigError, match="exactly once") as err:
        split_chat_template("{% for m in messages %}{{ m['content'] }}{{ m['content'] }}{% endfor %}")
    assert err.value.field == "prompt_format"
    with pytest.raises(ConfigError, match="cannot be rendered: no users"):
        split_chat_template("{{ raise_exception('no users') }}")


def test_chat_prompts_keep_exact_lengths_and_wrap_the_question(chat_model):
    tok = diffeval.load(str(chat_model)).tokenizer
    fmt = prompt_format("chat", tok)
    cfg = N.NeedleConfig(lengths=(300, 420), depths=(0.0, 50.0, 100.0), n_needles=3, n_queries=2, samples=2)
    head_ids = fmt.prefix_ids(tok)
    for s in R.generate(cfg.grid(), tok, fmt=fmt):
        assert s.n_tokens[0] == s.length
        for prompt, key in zip(s.prompts, s.queries):
            assert list(prompt[: len(head_ids)]) == head_ids
            text = tok.decode(list(prompt))
            assert text.endswith(f"Question: What is the magic number for {key}?<|end|>\n<|assistant|>\n"
                                 f"The magic number for {key} is")
        for n in s.needles:  # spans still point at the needles
            assert n["value"] in tok.decode(list(s.prompts[0][n["token_start"]:n["token_end"]]))


def test_missing_chat_template_is_one_line_exit_2(tmp_path, capsys):
    code = run_cli(["needle", "--ckpt", "zoo:transformer-tiny", "--len", "256", "--depths", "50", "--samples", "1",
                    "--prompt-format", "chat", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--prompt-format" in err and "no chat template" in err
    assert not (tmp_path / "o").exists()


def test_chat_format_runs_needle_and_attn_map_end_to_end(chat_model, tmp_path):
    for cmd in (["needle", "--samples", "1", "--max-new-tokens", "4"], ["attn-map", "--samples", "1", "--query", "answer"]):
        out = tmp_path / cmd[0]
        assert run_cli([cmd[0], "--ckpt", str(chat_model), "--len", "256", "--depths", "0,100", *cmd[1:],
                        "--prompt-format", "chat", "--save-prompts", "--out", str(out)]) == 0
        results = json.loads((out / "results.json").read_text())
        assert results["run"]["prompt_format"] == "chat"
        rows = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
        assert all("<|assistant|>" in r["text"] for r in rows)


def test_ruler_decoding_scores_the_whole_answer():
    tok = diffeval.load("zoo:transformer-tiny").tokenizer
    ids = tok.encode(" I think\nit is 1234567.")
    assert answer_text(tok, ids, "default") == " I think"
    assert "1234567" in answer_text(tok, ids, "ruler")


def test_hf_checkpoint_without_tokenizer_loads_and_probes_say_why(hf_dir, tmp_path, capsys):
    src = hf_dir("llama")
    model = tmp_path / "no-tok"
    shutil.copytree(src, model)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model / name).unlink(missing_ok=True)
    loaded = diffeval.load(str(model))
    assert loaded.tokenizer is None and loaded.info.tokenizer == "none"
    capsys.readouterr()  # the fixture's own output
    code = run_cli(["needle", "--ckpt", str(model), "--len", "128", "--samples", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "no tokenizer.json" in err
