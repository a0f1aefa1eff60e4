"""Prompts as the model's own tokenizer builds them, checked against transformers: plain
prompts start as `AutoTokenizer(text)` does (BOS by the tokenizer's rule), chat prompts equal
`apply_chat_template(..., add_generation_prompt=True)` + the answer prefix token for token
(three template styles written into test tokenizers), `prompts.jsonl` re-tokenizes to the
recorded ids, and `--bos auto|always|never`."""

import json
import shutil

import pytest
from helpers import run_cli

from diffeval.probes import needle as N
from diffeval.probes import retrieval as R
from diffeval.probes.prompts import PromptFormat, prompt_format
from diffeval.requests import ids_sha256
from diffeval.tokenizers import load_tokenizer, with_bos

SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>"]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
SYSTEM_DEFAULT = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a careful assistant."
                  "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                  "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# style -> (BOS post-processor token or None, bos_token, chat template): SmolLM2-like (the
# turn opener is its bos_token, the tokenizer adds none), Llama-3-like (BOS added and written
# by the template), Qwen-like (a system turn by default, no BOS)
STYLES = {"chatml": (None, "<|im_start|>", CHATML), "llama3": ("<|begin_of_text|>", "<|begin_of_text|>", LLAMA3),
          "system-default": (None, None, SYSTEM_DEFAULT)}


def write_tokenizer(directory, bos_post=None, bos_token=None, template=None, config=None):
    """A byte-level BPE tokenizer.json (vocabulary 300) with the special tokens above; a
    TemplateProcessing post-processor that adds `bos_post`, or ByteLevel's that adds none."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["The magic number for Paris is 1234567. What is the magic number? The "
                             "question and the answer are in the text."] * 20, trainer)
    if bos_post:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos_post} $A", special_tokens=[
            (bos_post, tok.token_to_id(bos_post))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    cfg = {"eos_token": "</s>", **({"bos_token": bos_token} if bos_token else {}),
           **({"chat_template": template} if template else {}), **(config or {})}
    (directory / "tokenizer_config.json").write_text(json.dumps(cfg))
    return directory


def hf_tokenizer(directory):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(str(directory))


def _ids(got) -> list[int]:
    """apply_chat_template's ids, whether it returns a list or an encoding."""
    return list(got["input_ids"] if hasattr(got, "keys") else got)


@pytest.mark.parametrize("bos_post,bos_token,want_bos", [("<s>", "<s>", True), (None, "<|im_start|>", False),
                                                         (None, None, False)])
def test_plain_prompts_start_as_autotokenizer_and_keep_exact_lengths(tmp_path, bos_post, bos_token, want_bos):
    d = write_tokenizer(tmp_path / "tok", bos_post, bos_token)
    tok, hf = load_tokenizer(d), hf_tokenizer(d)
    assert (tok.bos_id is not None) == want_bos
    for text in ("The magic number", "What is the answer?\nIt is 12."):
        assert PromptFormat().prefix_ids(tok) + tok.encode(text) == hf(text)["input_ids"]
    cfg = N.NeedleConfig(lengths=(160, 200), depths=(0.0, 100.0), samples=1)
    for s in R.generate(cfg.grid(), tok, fmt=PromptFormat()):
        assert s.n_tokens[0] == s.length
        prompt = list(s.prompts[0])
        assert hf(tok.text_of(prompt[1:] if want_bos else prompt))["input_ids"] == prompt


def test_a_declared_add_bos_token_is_the_rule(tmp_path):
    assert load_tokenizer(write_tokenizer(tmp_path / "a", None, "<s>", config={"add_bos_token": True})).bos_id == 0
    tok = load_tokenizer(write_tokenizer(tmp_path / "b", "<s>", "<s>", config={"add_bos_token": False}))
    assert tok.bos_id is None and "add_bos_token=false" in tok.bos_rule


@pytest.mark.parametrize("style", list(STYLES))
def test_chat_prompts_equal_apply_chat_template_plus_the_answer_prefix(tmp_path, style):
    bos_post, bos_token, template = STYLES[style]
    d = write_tokenizer(tmp_path / style, bos_post, bos_token, template)
    tok, hf = load_tokenizer(d), hf_tokenizer(d)
    fmt = prompt_format("chat", tok)
    marker = "\u2063user\u2063"
    head, tail = hf.apply_chat_template([{"role": "user", "content": marker}], add_generation_prompt=True,
                                        tokenize=False).split(marker)
    cfg = N.NeedleConfig(lengths=(200,), depths=(0.0, 50.0, 100.0), n_needles=2, n_queries=2, samples=2)
    checked = 0
    for s in R.generate(cfg.grid(), tok, fmt=fmt):
        assert s.n_tokens[0] == s.length
        for prompt, key in zip(s.prompts, s.queries):
            text = tok.text_of(list(prompt))
            answer = f"The magic number for {key} is"
            assert text.startswith(head) and text.endswith(tail + answer)
            user = text[len(head): -len(tail + answer)]
            want = _ids(hf.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                               tokenize=True)) + hf.encode(answer, add_special_tokens=False)
            assert list(prompt) == want
            assert prompt[0] != prompt[1]  # the turn opener (or BOS) once
            checked += 1
    assert checked == 12


def test_bos_policies_plain_and_chat(tmp_path):
    llama = load_tokenizer(write_tokenizer(tmp_path / "l", *STYLES["llama3"]))
    chatml = load_tokenizer(write_tokenizer(tmp_path / "c", *STYLES["chatml"]))
    bos3, opener = llama.bos_id, chatml.bos_token_id  # chatml: bos_token is the turn opener, never added
    plain = PromptFormat()
    assert plain.prefix_ids(with_bos(llama, "never")) == [] and plain.prefix_ids(llama) == [bos3]
    assert plain.prefix_ids(chatml) == [] and plain.prefix_ids(with_bos(chatml, "always")) == [chatml.bos_token_id]
    fmt3 = prompt_format("chat", llama)
    assert fmt3.prefix_ids(llama)[0] == bos3 and fmt3.prefix_ids(llama).count(bos3) == 1
    assert fmt3.prefix_ids(with_bos(llama, "never"))[0] != bos3
    assert fmt3.prefix_ids(with_bos(llama, "always")) == fmt3.prefix_ids(llama)  # never doubled
    fmtc = prompt_format("chat", chatml)
    assert fmtc.prefix_ids(chatml)[0] == opener and fmtc.prefix_ids(chatml)[1] != opener
    assert fmtc.prefix_ids(with_bos(chatml, "always")) == fmtc.prefix_ids(chatml)  # it starts with it already


@pytest.fixture(scope="module")
def chat_llama(hf_dir, tmp_path_factory):
    """A random tiny HF Llama whose tokenizer has the Llama-3 style: BOS added and written by
    its chat template."""
    root = tmp_path_factory.mktemp("parity") / "llama3-tiny"
    shutil.copytree(hf_dir("llama"), root)
    write_tokenizer(root, *STYLES["llama3"])
    return root


@pytest.mark.parametrize("fmt", ["plain", "chat"])
def test_prompts_jsonl_retokenizes_to_the_recorded_ids(chat_llama, tmp_path, fmt):
    out = tmp_path / fmt
    assert run_cli(["needle", "--ckpt", str(chat_llama), "--len", "128", "--depths", "0,100", "--samples", "1",
                    "--max-new-tokens", "2", "--prompt-format", fmt, "--save-prompts", "--out", str(out)]) == 0
    hf = hf_tokenizer(chat_llama)
    rows = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["retokenizes"] for r in rows)
    for r, s in zip(rows, samples):
        ids = hf.encode(r["text"], add_special_tokens=False)
        assert ids_sha256(ids) == r["ids_sha256"] and len(ids) == r["n_tokens"] == s["n_tokens"][0] == 128
        assert ids[0] == hf.convert_tokens_to_ids("<|begin_of_text|>") and ids[1] != ids[0]
    results = json.loads((out / "results.json").read_text())
    assert results["run"]["bos"] == "auto"
    assert results["models"][0]["bos"] == {"policy": "auto", "rule": "tokenizer.json post-processor",
                                           "id": hf.convert_tokens_to_ids("<|begin_of_text|>"),
                                           "token": "<|begin_of_text|>"}


def test_bos_always_without_a_bos_token_is_one_line_exit_2(hf_dir, tmp_path, capsys):
    root = tmp_path / "no-bos"
    shutil.copytree(hf_dir("llama"), root)
    write_tokenizer(root, None, None)
    capsys.readouterr()
    code = run_cli(["needle", "--ckpt", str(root), "--len", "128", "--samples", "1", "--bos", "always",
                    "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--bos" in err and "no bos_token" in err
    code = run_cli(["needle", "--ckpt", str(root), "--len", "128", "--samples", "1", "--bos", "sometimes",
                    "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--bos" in err and "auto, always, never" in err
