"""The synthetic corpus and the zoo tokenizer: formats, determinism, answer spans."""

import numpy as np
import pytest

from diffeval.errors import ConfigError
from diffeval.probes.assembly import PROMPT_SUFFIX
from diffeval.probes.retrieval import CITY_ANSWER, CITY_NEEDLE
from diffeval.train.corpus import (
    UNKNOWN,
    CorpusConfig,
    Packer,
    corpus_words,
    icl_doc,
    needle_doc,
    repeat_doc,
)
from diffeval.train.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from diffeval.tokenizers import load_tokenizer

    d = tmp_path_factory.mktemp("tok")
    build_tokenizer(corpus_words(0), d)
    return load_tokenizer(d)


def _rng(seed):
    return np.random.Generator(np.random.PCG64(seed))


def test_tokenizer_round_trips_ascii_and_merges_city_stems(tok):
    text = "Answer: The magic number for Addis Ababa is 1234567.\nzyx Qq-42 {odd}"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    pieces = [tok.decode([i]) for i in ids]
    assert " Addis Ababa is" in pieces
    assert pieces[pieces.index(" Addis Ababa is") + 1: pieces.index(" Addis Ababa is") + 4] == [" 123", "456", "7"]
    assert tok.bos_id is not None and tok.eos_id is not None


def test_needle_doc_uses_the_probe_formats_and_marks_the_values():
    cfg = CorpusConfig(needle_kinds={"city": 1.0}, p_unknown=0.0)
    doc = needle_doc(_rng(1), 300, cfg)
    assert "\n\nQuestion: What is the magic number for " in doc.text
    assert doc.spans
    for a, b in doc.spans:
        value = doc.text[a:b]
        assert value.isdigit() and len(value) == 7
        key = doc.text[:a].rsplit(CITY_ANSWER.split("{key}")[0], 1)[1][: -len(" is ")]
        assert CITY_NEEDLE.format(key=key, value=value) in doc.text
        assert PROMPT_SUFFIX.split("{question}")[0] in doc.text


def test_unanswerable_questions_get_the_unknown_form():
    cfg = CorpusConfig(needle_kinds={"city": 1.0}, p_unknown=0.99)
    doc = needle_doc(_rng(2), 200, cfg)
    for a, b in doc.spans:
        assert doc.text[a:b] == UNKNOWN
        key = doc.text[:a].rsplit("for ", 1)[1][: -len(" is ")]
        assert f"for {key} is " not in doc.text[: doc.text.index("\n\nQuestion:")]


def test_icl_and_repeat_docs():
    icl = icl_doc(_rng(3), 120, CorpusConfig())
    labels = {icl.text[a:b] for a, b in icl.spans}
    assert 2 <= len(labels) <= 4 and icl.text.startswith("Input: ")
    rep = repeat_doc(_rng(4), 300, CorpusConfig())
    copies = [rep.text[a:b] for a, b in rep.spans]
    assert copies and all(c == copies[0] for c in copies)
    assert rep.text.index(copies[0]) < rep.spans[0][0]  # the passage occurs before its first marked copy


def test_packer_is_a_pure_function_of_its_seed(tok):
    packer = Packer(tok._tok, tok.bos_id, tok.eos_id, CorpusConfig(), answer_weight=3.0)
    a = packer.batch(np.random.SeedSequence(5), 2, 128, 16, 128)
    b = packer.batch(np.random.SeedSequence(5), 2, 128, 16, 128)
    c = packer.batch(np.random.SeedSequence(6), 2, 128, 16, 128)
    assert a[0].shape == (2, 129) and a[1].shape == (2, 128) and a[2].shape == (2, 128)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    assert set(np.unique(a[1])) <= {1.0, 3.0} and ((a[2] > 0) == (a[1] > 1)).all()


@pytest.mark.parametrize("bad, match", [
    ({"mix": {"needle": 1.0, "poems": 1.0}}, "unknown entry 'poems'"),
    ({"max_needles": 0}, r"max_needles \(0\)"),
    ({"p_unknown": 1.5}, r"p_unknown \(1.5\)"),
])
def test_corpus_config_errors_name_the_value(bad, match):
    with pytest.raises(ConfigError, match=match):
        CorpusConfig(**bad)
