"""Needle sample generation: option parsing, config validation and the generator's properties
(determinism, exact lengths, needle placement, shared prefixes, haystack sources)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffeval.errors import ConfigError, UsageError
from diffeval.probes import assembly as A
from diffeval.probes import retrieval as R
from diffeval.probes import words as W
from diffeval import specs as S
from diffeval.probes.haystack import NOISE_SENTENCES, essay_sentence, load_haystack, split_sentences
from diffeval.tokenizers import ByteTokenizer, HFTokenizer

HYP = settings(max_examples=12, deadline=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
KINDS = list(R.NEEDLE_KINDS)


# --- tokenizers ------------------------------------------------------------------------------


def _corpus():
    rng = np.random.default_rng(7)
    for _ in range(1500):
        yield " ".join(essay_sentence(rng) for _ in range(4))
    yield " ".join(NOISE_SENTENCES * 3)
    for i, city in enumerate(W.CITIES):
        key = f"{W.KEY_ADJECTIVES[i % 40]}-{W.KEY_NOUNS[i % 37]}"
        value = W.VALUE_WORDS[i % len(W.VALUE_WORDS)]
        for kind, k, v in (("city", city, str(1_000_000 + 7919 * i)), ("kv-word", key, value),
                           ("uuid", key, "0f3a9c2e-5b7d-4e1f-8a6c-d2b4e6f80a1c")):
            nk = R.NEEDLE_KINDS[kind]
            yield nk.needle.format(key=k, value=v) + A.PROMPT_SUFFIX.format(
                question=nk.question.format(key=k), answer=nk.answer.format(key=k))


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    tok.save(str(path))
    return HFTokenizer(path, {"bos_token": "<s>", "eos_token": "</s>"})


@pytest.fixture(scope="module")
def byte():
    return ByteTokenizer()


def _bos(tok) -> list[int]:
    return [] if tok.bos_id is None else [tok.bos_id]


def _sentence(kind: str, key: str, value: str) -> str:
    return R.NEEDLE_KINDS[kind].needle.format(key=key, value=value)


def _suffix(kind: str, key: str) -> str:
    nk = R.NEEDLE_KINDS[kind]
    return A.PROMPT_SUFFIX.format(question=nk.question.format(key=key), answer=nk.answer.format(key=key))


def _context_text(tok, sample, kind) -> str:
    text = tok.decode(list(sample.prompts[0]))
    tail = _suffix(kind, sample.queries[0])
    assert text.endswith(tail)
    return text[: -len(tail)]


# --- option parsing --------------------------------------------------------------------------


def test_parse_lengths_units_lists_and_ranges():
    assert S.parse_lengths("4k,8K,16384") == [4096, 8192, 16384]
    assert S.parse_lengths("64K") == [65536]
    assert S.parse_lengths(" 1.5k ") == [1536]
    assert S.parse_lengths("1m") == [1048576]
    assert S.parse_lengths("4k:32k") == [4096, 8192, 16384, 32768]
    assert S.parse_lengths("1000:4000:1000,8k") == [1000, 2000, 3000, 4000, 8192]


@pytest.mark.parametrize("spec, needle", [
    ("abc", "'abc'"), ("0", "'0'"), ("-4k", "'-4k'"), ("4k,,8k", "empty"), ("", "''"),
    ("4x", "'4x'"), ("1.3k", "1331.2"), ("4k,4096", "4096 twice"), ("8k:4k", "below start"),
    ("4k:12k", "power of two"), ("1:2:3:4", "start:stop"),
])
def test_parse_lengths_rejects_junk_with_the_value(spec, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)) as err:
        S.parse_lengths(spec)
    assert err.value.field == "lengths"


def test_parse_depths_lists_and_linspace():
    assert S.parse_depths("0,25,50") == [0.0, 25.0, 50.0]
    assert S.parse_depths("0:100:11") == [float(x) for x in range(0, 101, 10)]
    assert S.parse_depths("0:100:3") == [0.0, 50.0, 100.0]
    assert S.parse_depths("0:100:7")[1] == round(100 / 6, 6)
    assert S.parse_depths("50%, 100") == [50.0, 100.0]
    assert S.parse_depths("10:10:1") == [10.0]


@pytest.mark.parametrize("spec, needle", [
    ("101", "'101'"), ("-5", "'-5'"), ("x", "'x'"), ("0:100", "start:stop:count"),
    ("0:100:0", "count (0)"), ("0:100:a", "'a'"), ("0,0", "0 twice"), ("", "''"),
])
def test_parse_depths_rejects_junk_with_the_value(spec, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)) as err:
        S.parse_depths(spec)
    assert err.value.field == "depths"


def test_length_label():
    assert [S.length_label(n) for n in (4096, 65536, 1536, 1000)] == ["4K", "64K", "1.5K", "1000"]


# --- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, field, needle", [
    ({"n_needles": 2, "n_queries": 3}, "n_queries", "3 must not exceed the number of needles (2)"),
    ({"n_queries": 0}, "n_queries", "0 must be an integer in [1, 1,000,000]"),
    ({"n_needles": 0}, "n_needles", "0 must be"),
    ({"samples": 0}, "samples", "0 must be"),
    ({"seed": -1}, "seed", "-1 must be an integer in [0, "),
    ({"needle_kind": "cty"}, "needle_kind", "did you mean 'city'"),
    ({"lengths": ()}, "lengths", "is empty"),
    ({"lengths": (0,)}, "lengths", "0 must be"),
    ({"lengths": (512, 512)}, "lengths", "repeat"),
    ({"depths": (120.0,)}, "depths", "120 must lie between 0 and 100"),
    ({"depths": ()}, "depths", "is empty"),
    ({"haystack": " "}, "haystack", "' ' must be"),
    ({"n_needles": 10_000}, "n_needles", "10000 exceeds"),
])
def test_config_validation_messages(kwargs, field, needle):
    base = {"lengths": (512,), "depths": (0.0, 50.0)}
    with pytest.raises(ConfigError, match=re.escape(needle)) as err:
        R.NeedleGrid(**{**base, **kwargs})
    assert err.value.field == field


# --- vocabularies and the essay ---------------------------------------------------------------


def test_vocabularies_are_distinct_and_well_formed():
    assert len(set(W.CITIES)) == len(W.CITIES) >= 100
    assert not [(a, b) for a in W.CITIES for b in W.CITIES if a != b and a in b]
    assert len(set(W.VALUE_WORDS)) == len(W.VALUE_WORDS)
    keys = set(W.KEY_ADJECTIVES) | set(W.KEY_NOUNS)
    assert not [v for v in W.VALUE_WORDS if any(v in k or k in v for k in keys)]


def test_essay_is_varied_and_never_looks_like_a_needle():
    rng = np.random.default_rng(123)
    sentences = [essay_sentence(rng) for _ in range(2000)]
    assert len(set(sentences)) > 1800
    text = " ".join(sentences)
    assert not re.search(r"\d", text)
    assert not re.search(r"[0-9a-f]{8}-[0-9a-f]{4}", text)
    low = text.lower()
    assert "magic" not in low and "special" not in low
    for word in W.VALUE_WORDS:  # word values are never redrawn because of the essay
        assert word not in low, word
    assert "-" not in text  # so no adjective-noun key
    assert all(s[0].isupper() and s.endswith(".") for s in sentences)
    assert split_sentences(" ".join(sentences[:50])) == sentences[:50]


def test_needle_values_have_their_formats():
    rng = np.random.default_rng(0)
    for kind, pattern in (("city", r"[1-9]\d{6}"), ("kv-number", r"[1-9]\d{6}"),
                          ("uuid", r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"),
                          ("kv-word", "|".join(W.VALUE_WORDS))):
        needles = R.draw_needles(R.NEEDLE_KINDS[kind], 20, rng)
        assert len({n.key for n in needles}) == len({n.value for n in needles}) == 20
        for n in needles:
            assert re.fullmatch(pattern, n.value), (kind, n.value)
            assert n.sentence[n.value_at:].startswith(n.value)
            if kind == "city":
                assert n.key in W.CITIES and n.sentence == f"The magic number for {n.key} is {n.value}."
            else:
                noun = {"kv-number": "number", "kv-word": "word", "uuid": "uuid"}[kind]
                assert re.fullmatch(r"[a-z]+-[a-z]+", n.key)
                # RULER's forms: "one of the ... numbers" in the text, one "number" asked
                assert n.sentence == f"One of the special magic {noun}s for {n.key} is: {n.value}."
                assert n.question == f"What is the special magic {noun} for {n.key} mentioned in the provided text?"
                assert n.answer == f"The special magic {noun} for {n.key} mentioned in the provided text is"


# --- generator properties --------------------------------------------------------------------


def _as_bytes(samples) -> str:
    return json.dumps([[s.to_record(), [list(p) for p in s.prompts]] for s in samples])


@HYP
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(KINDS), hay=st.sampled_from(["noise", "essay"]))
def test_same_seed_same_samples_other_seed_other_samples(byte, seed, kind, hay):
    cfg = R.NeedleGrid(lengths=(400,), depths=(0, 50, 100), n_needles=2, n_queries=2, samples=2,
                         haystack=hay, needle_kind=kind, seed=seed)
    a, b = R.generate(cfg, byte), R.generate(cfg, byte)
    assert _as_bytes(a) == _as_bytes(b)
    other = R.generate(dataclasses.replace(cfg, seed=seed + 1), byte)
    assert _as_bytes(a) != _as_bytes(other)
    assert [s.expected for s in a] != [s.expected for s in other]


def test_samples_are_ordered_and_regenerable_one_group_at_a_time(byte):
    cfg = R.NeedleGrid(lengths=(700, 300), depths=(100, 0, 50), samples=3, seed=9)
    samples = R.generate(cfg, byte)
    assert [(s.length, s.index, s.depth) for s in samples] == sorted(
        (n, i, float(d)) for n in (300, 700) for i in range(3) for d in (0, 50, 100))
    assert len({s.id for s in samples}) == len(samples)
    assert samples[0].id == "L300-d0-s0"
    group = R.generate_group(cfg, byte, 700, 1)
    assert _as_bytes(group) == _as_bytes([s for s in samples if (s.length, s.index) == (700, 1)])


def _check_sample(tok, s, kind: str, hay: str, n_needles: int, n_queries: int) -> None:
    bos = _bos(tok)
    # Exact length of the first prompt; the others differ only by their question.
    assert s.n_tokens[0] == s.length == len(s.prompts[0])
    for r in range(n_queries):
        assert list(s.prompts[r][: len(bos)]) == bos
        extra = len(tok.encode(_suffix(kind, s.queries[r]))) - len(tok.encode(_suffix(kind, s.queries[0])))
        assert s.n_tokens[r] == s.n_tokens[0] + extra == len(s.prompts[r])
    context = _context_text(tok, s, kind)
    n_ctx = len(tok.encode(context))
    assert len(s.prompts[0]) == len(bos) + n_ctx + len(tok.encode(_suffix(kind, s.queries[0])))
    for r in range(1, n_queries):  # the R questions share the whole context
        assert list(s.prompts[r][: len(bos) + n_ctx]) == list(s.prompts[0][: len(bos) + n_ctx])
    # Needles: distinct keys and values; each sentence once; each value only in its needle.
    keys, values = [n["key"] for n in s.needles], [n["value"] for n in s.needles]
    assert len(set(keys)) == len(keys) == n_needles and len(set(values)) == n_needles
    assert list(s.queries) == keys[:n_queries] and list(s.expected) == values[:n_queries]
    full = [tok.decode(list(p)) for p in s.prompts]
    for n in s.needles:
        sentence = _sentence(kind, n["key"], n["value"])
        assert context.count(sentence) == 1
        assert all(t.lower().count(n["value"].lower()) == 1 for t in full)
        span = tok.decode(list(s.prompts[0][n["token_start"]:n["token_end"]]))
        assert span.strip() == sentence
    for (a, b), v in zip(s.answer_spans, s.expected):
        assert tok.decode(list(s.prompts[0][a:b])).strip() == v
    # Depth: the asked needle starts within one haystack sentence of depth% of the rest.
    first = s.needles[0]
    width = first["token_end"] - first["token_start"]
    target = s.depth / 100.0 * (n_ctx - width)
    pieces = split_sentences(context)
    tolerance = max(len(tok.encode(" " + p)) for p in pieces) + 1
    assert abs(first["token_start"] - len(bos) - target) <= tolerance
    assert abs(first["depth_pct"] - s.depth) <= 100.0 * tolerance / (n_ctx - width)
    sentence = _sentence(kind, first["key"], first["value"])
    if s.depth == 0:
        assert context.startswith(sentence) and first["token_start"] == len(bos)
    if s.depth == 100:
        assert context.endswith(sentence) and first["depth_pct"] == 100.0
    # Haystack: everything outside the needles comes from the chosen source.
    rest = context
    for n in s.needles:
        rest = rest.replace(_sentence(kind, n["key"], n["value"]), " ")
    if hay == "noise":  # whole noise sentences, and a cut piece that closes the haystack
        noise = " ".join(NOISE_SENTENCES * 3)
        assert all(p.rstrip(".") in noise for p in split_sentences(rest))
    assert not re.search(r"\d", rest)


@pytest.mark.parametrize("tok_name", ["byte", "bpe"])
@HYP
@given(data=st.data())
def test_exact_lengths_and_needle_placement(request, tok_name, data):
    tok = request.getfixturevalue(tok_name)
    kind = data.draw(st.sampled_from(KINDS), "kind")
    hay = data.draw(st.sampled_from(["noise", "essay"]), "haystack")
    n_needles = data.draw(st.integers(1, 5), "n_needles")
    n_queries = data.draw(st.integers(1, n_needles), "n_queries")
    per_needle = 100 if tok_name == "byte" else 70
    length = data.draw(st.integers(per_needle * (n_needles + 2), 2500), "length")
    depths = tuple(sorted(set(data.draw(st.lists(st.sampled_from([0, 10, 25, 33.3, 50, 75, 90, 100]),
                                                 min_size=1, max_size=4), "depths"))))
    cfg = R.NeedleGrid(lengths=(length,), depths=depths, n_needles=n_needles, n_queries=n_queries,
                         samples=1, haystack=hay, needle_kind=kind, seed=data.draw(st.integers(0, 10**6), "seed"))
    samples = R.generate(cfg, tok)
    assert len(samples) == len(depths)
    for s in samples:
        _check_sample(tok, s, kind, hay, n_needles, n_queries)


@pytest.mark.parametrize("tok_name", ["byte", "bpe"])
def test_depths_share_haystack_distractors_and_prefixes(request, tok_name):
    tok = request.getfixturevalue(tok_name)
    cfg = R.NeedleGrid(lengths=(1500,), depths=(0, 25, 50, 75, 100), n_needles=4, n_queries=2,
                         samples=3, haystack="essay", needle_kind="city", seed=11)
    samples = R.generate(cfg, tok)
    for index in range(3):
        group = [s for s in samples if s.index == index]
        assert len({(s.queries, s.expected) for s in group}) == 1
        # Only the first asked needle moves: the rest of the context is the same text (the
        # closing fragment may differ at depth 0, where the first piece has no leading space).
        bodies = []
        for s in group:
            asked = _sentence("city", s.queries[0], s.expected[0])
            bodies.append(_context_text(tok, s, "city").replace(asked + " ", "").replace(" " + asked, ""))
        for body in bodies[1:]:
            shared = len(os.path.commonprefix([bodies[0], body]))
            assert shared >= len(body) - 120
        assert len(set(bodies[1:])) == 1
        # Distractors keep their order in the text.
        orders = [[n["key"] for n in sorted(s.needles[1:], key=lambda n: n["token_start"])] for s in group]
        assert all(o == orders[0] for o in orders)
        # Prompts of two depths share the tokens before the earlier needle slot.
        for a, b in zip(group, group[1:]):
            slot = min(a.needles[0]["token_start"], b.needles[0]["token_start"])
            pa, pb = a.prompts[0], b.prompts[0]
            shared = next((i for i, (x, y) in enumerate(zip(pa, pb)) if x != y), min(len(pa), len(pb)))
            assert shared >= slot


def test_records_are_json_and_hash_the_prompts(byte):
    cfg = R.NeedleGrid(lengths=(600,), depths=(50,), n_needles=3, n_queries=2, samples=1, needle_kind="uuid")
    s = R.generate(cfg, byte)[0]
    rec = json.loads(json.dumps(s.to_record()))
    assert set(rec) == {"id", "length", "depth", "index", "n_tokens", "needles", "queries", "expected",
                        "answer_spans", "prompt_sha256", "n_context"}
    assert byte.decode(list(s.prompts[0][s.n_context:])).startswith("\n\nQuestion: ")
    assert s.needles[0]["token_end"] <= s.n_context
    assert set(rec["needles"][0]) == {"key", "value", "depth_pct", "token_start", "token_end"}
    assert len(rec["prompt_sha256"]) == 2 and rec["prompt_sha256"][0] != rec["prompt_sha256"][1]
    assert "prompts" not in rec


def test_position_limit_is_enforced_unless_allowed(byte):
    cfg = R.NeedleGrid(lengths=(512, 1024), depths=(50,), samples=1)
    with pytest.raises(UsageError, match=r"length 1024 \(1K\) exceeds the model's position limit of 800"):
        R.generate(cfg, byte, max_positions=800)
    assert max(s.n_tokens[0] for s in R.generate(cfg, byte, max_positions=800, allow_beyond=True)) == 1024
    # A second question longer than the first pushes its prompt past the limit.
    for seed in range(50):
        cfg = R.NeedleGrid(lengths=(512,), depths=(50,), n_needles=2, n_queries=2, samples=1, seed=seed)
        if R.generate(cfg, byte)[0].n_tokens[1] > 512:
            break
    with pytest.raises(UsageError, match=r"length 512: a prompt has 5\d\d tokens.*limit of 512"):
        R.generate(cfg, byte, max_positions=512)


def test_too_short_length_names_the_need(byte):
    cfg = R.NeedleGrid(lengths=(100,), depths=(0,), n_needles=4, samples=1)
    with pytest.raises(UsageError, match=r"length 100 is too short: 4 needle\(s\) and the question already take \d+ tokens"):
        R.generate(cfg, byte)


def test_bpe_64k_prompt_is_exact_and_fast(bpe):
    cfg = R.NeedleGrid(lengths=(65536,), depths=(25,), n_needles=8, samples=1, haystack="essay")
    start = time.perf_counter()
    s = R.generate(cfg, bpe)[0]
    elapsed = time.perf_counter() - start
    assert s.n_tokens == (65536,)
    assert abs(s.needles[0]["depth_pct"] - 25.0) < 0.5
    assert elapsed < 5.0, f"64k prompt took {elapsed:.2f} s"


# --- haystack from files ----------------------------------------------------------------------

TEXT = ("Rivers carve valleys over long ages. Wind shapes the dunes! Does rain fall in the desert? "
        "Ice cracks stone in the cold months.\n\nA new paragraph starts here. It ends here.")


def test_file_and_folder_haystacks(tmp_path, byte):
    (tmp_path / "a.txt").write_text(TEXT)
    sub = tmp_path / "more"
    sub.mkdir()
    (sub / "b.txt").write_text("Owls hunt at night. Foxes sleep by day.")
    (tmp_path / "skip.md").write_text("Not a text file for the haystack.")
    hay = load_haystack(str(tmp_path))
    assert hay.kind == "path" and "Owls hunt at night." in hay.sentences
    assert "Wind shapes the dunes!" in hay.sentences and len(hay.sentences) == 8
    assert not any("Not a text" in s for s in hay.sentences)
    for spec in (str(tmp_path / "a.txt"), str(tmp_path)):
        cfg = R.NeedleGrid(lengths=(800,), depths=(0, 100), n_needles=2, samples=2, haystack=spec)
        for s in R.generate(cfg, byte):
            context = _context_text(byte, s, "city")
            rest = context
            for n in s.needles:
                rest = rest.replace(_sentence("city", n["key"], n["value"]), "")
            known = " ".join(hay.sentences)
            assert all(w in known for w in rest.replace(".", " ").split())
            assert s.n_tokens[0] == 800


def test_haystack_path_errors_name_the_path(tmp_path):
    with pytest.raises(UsageError, match=r"'nosie'.*no such file or folder.*did you mean 'noise'"):
        load_haystack("nosie")
    missing = tmp_path / "gone.txt"
    with pytest.raises(UsageError, match=re.escape(str(missing))):
        load_haystack(str(missing))
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(ConfigError, match=re.escape(f"folder {empty_dir} holds no .txt files")) as err:
        load_haystack(str(empty_dir))
    assert err.value.field == "haystack"
    blank = tmp_path / "blank.txt"
    blank.write_text("  \n\n ")
    with pytest.raises(UsageError, match=re.escape(f"haystack {blank}: no text found")):
        load_haystack(str(blank))
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match=re.escape(f"file {binary}: not UTF-8 text")):
        load_haystack(str(binary))


def test_values_found_in_the_haystack_are_redrawn(tmp_path, byte):
    half = W.VALUE_WORDS[::2]
    path = tmp_path / "words.txt"
    path.write_text(" ".join(f"They spoke of the {w} today." for w in half))
    # 2500 bytes hold the whole file, so every value in `half` would collide.
    cfg = R.NeedleGrid(lengths=(2500,), depths=(50,), n_needles=2, samples=4, haystack=str(path),
                         needle_kind="kv-word", seed=4)
    for s in R.generate(cfg, byte):
        text = byte.decode(list(s.prompts[0])).lower()
        for n in s.needles:
            assert n["value"] not in half and text.count(n["value"]) == 1
    everything = tmp_path / "all.txt"
    everything.write_text("We list them all: " + " ".join(W.VALUE_WORDS) + ".")
    cfg = R.NeedleGrid(lengths=(3000,), depths=(50,), samples=1, haystack=str(everything), needle_kind="kv-word")
    with pytest.raises(UsageError, match=r"after 20 draws, a needle value or key phrase still also occurs"):
        R.generate(cfg, byte)


def test_split_sentences_keeps_quotes_and_cuts_long_runs():
    assert split_sentences('He said "Stop!" Then left.  Next?\nYes.') == ['He said "Stop!"', "Then left.", "Next?", "Yes."]
    long = " ".join(["word"] * 300)
    pieces = split_sentences(long)
    assert len(pieces) > 1 and all(len(p) <= 400 for p in pieces) and " ".join(pieces) == long
