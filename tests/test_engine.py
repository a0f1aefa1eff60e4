"""The engine: cached decoding, prefix reuse and batching give the same generations as greedy
decoding by full forward passes."""

import pytest
import torch

from diffeval.engine import Engine, Generate, common_prefix
from helpers import argmax_continuation, tiny_model


def _prompts():
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (120,), generator=g).tolist()
    tails = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (5, 5, 9, 5, 1)]
    prompts = [base + t for t in tails] + [base[:60] + tails[2], base + tails[0]]  # a duplicate too
    return prompts


def _run(model, prompts, stop_ids=frozenset({3}), n=6, **kw):
    outs = {}
    engine = Engine(model, stop_ids=frozenset(stop_ids), align=16, **kw)
    for i, out in engine.run([[Generate(tuple(p), n, None)] for p in prompts]):
        outs[i] = out[0]
    return [outs[i] for i in range(len(prompts))], engine.counters


def test_generate_is_the_argmax_of_full_forwards_and_stops_before_a_stop_token():
    model = tiny_model("transformer")
    prompt = [1, 2, 3, 4, 5]
    want = argmax_continuation(model, prompt, 6)
    assert len(want) == 6
    assert _run(model, [prompt], stop_ids=())[0] == [want]
    stop = want[2]
    assert _run(model, [prompt], stop_ids={stop})[0] == [want[: want.index(stop)]]  # the stop token is not kept
    assert _run(model, [prompt], stop_ids=(), n=2)[0] == [want[:2]]


def test_reuse_and_batching_match_independent_greedy_decoding():
    model = tiny_model("diff", vocab_size=259)
    prompts = _prompts()
    want = [argmax_continuation(model, p, 6, stop_ids={3}) for p in prompts]
    plain, plain_stats = _run(model, prompts, reuse=False)
    reused, reuse_stats = _run(model, prompts)
    batched, batch_stats = _run(model, prompts, batch_size=3)
    assert plain == want and reused == want and batched == want
    assert batch_stats.prefilled_tokens == reuse_stats.prefilled_tokens  # batches keep prefix reuse
    assert plain_stats.prefilled_tokens == sum(len(p) for p in prompts)
    assert reuse_stats.prefilled_tokens < 0.5 * plain_stats.prefilled_tokens
    assert reuse_stats.requests == len(prompts)


def test_a_batch_of_unrelated_prompts_decodes_together_exactly():
    """Prompts of one length that share nothing (the depths of a needle grid) are prefilled one
    by one and decoded as one batch: the same tokens as one at a time."""
    model = tiny_model("transformer", n_kv_heads=2, vocab_size=259)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 256, (70,), generator=g).tolist() for _ in range(4)]
    want = [argmax_continuation(model, p, 6, stop_ids={3}) for p in prompts]
    got, stats = _run(model, prompts, batch_size=4)
    assert got == want and stats.generated_tokens == sum(len(w) for w in want)


def test_stop_text_ends_a_continuation():
    model = tiny_model("transformer", vocab_size=259)
    prompt = list(range(40, 80))
    engine = Engine(model, decode=lambda ids: bytes(ids).decode("latin-1"))
    outs = dict(engine.run([[Generate(tuple(prompt), 6, None)]]))
    free = outs[0][0]  # the continuation without a stop text
    assert free == argmax_continuation(model, prompt, 6)
    stop_at = bytes([free[1]]).decode("latin-1")
    outs = {i: out[0] for i, out in engine.run([[Generate(tuple(prompt), 6, stop_at)]])}
    first = next(k for k, t in enumerate(free) if bytes([t]).decode("latin-1") == stop_at)
    assert outs[0] == free[: first + 1]


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2]) == 2


def _naive_logprob(model, prompt, cand):
    """Sum of log p(cand | prompt) from one full forward pass of prompt + cand."""
    ids = torch.tensor([prompt + cand])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids)[0].double(), dim=-1)  # (T, V)
    return sum(float(logp[len(prompt) - 1 + k, t]) for k, t in enumerate(cand))


def test_choice_scores_equal_full_forward_log_likelihoods_with_reuse():
    from diffeval.engine import Choice

    model = tiny_model("diff", vocab_size=259)
    g = torch.Generator().manual_seed(3)
    shared = torch.randint(0, 256, (90,), generator=g).tolist()
    queries = [shared + torch.randint(0, 256, (n,), generator=g).tolist() for n in (4, 7)]
    cands = [tuple(torch.randint(0, 256, (n,), generator=g).tolist()) for n in (1, 3, 2)]
    work = [[Choice(tuple(q), tuple(cands))] for q in queries]
    got = {}
    engine = Engine(model, align=16)
    for i, out in engine.run(work):
        got.__setitem__(i, out[0])
    for i, q in enumerate(queries):
        for score, cand in zip(got[i], cands):
            assert score.logprob == pytest.approx(_naive_logprob(model, q, list(cand)), abs=1e-4)
            assert score.n_tokens == len(cand)
            assert score.mean_logprob == pytest.approx(score.logprob / len(cand))
    # the second query reuses the shared prefix: far fewer than every token is prefilled
    assert engine.counters.prefilled_tokens < 0.7 * engine.counters.prompt_tokens


def test_greedy_flag_marks_the_model_own_continuation():
    from diffeval.engine import Choice

    model = tiny_model("transformer", vocab_size=259)
    prompt = list(range(30, 70))
    own = argmax_continuation(model, prompt, 3)
    other = [(own[0] + 1) % 256, *own[1:]]
    got = {}
    for i, out in Engine(model).run([[Choice(tuple(prompt), (tuple(own), tuple(other)))]]):
        got.__setitem__(i, out[0])
    assert got[0][0].greedy and not got[0][1].greedy
    assert got[0][0].logprob > got[0][1].logprob


def test_mixed_requests_finish_each_item_once_in_request_order():
    from diffeval.engine import CaptureRows, TokenNLL

    model = tiny_model("transformer", vocab_size=259)
    ids = tuple(range(40, 80))
    done = []
    work = [[TokenNLL(ids), Generate(ids, 2, None), CaptureRows(ids, (5, 39), (1,))], []]
    for i, out in Engine(model).run(work):
        done.append((i, out))
    assert sorted(i for i, _ in done) == [0, 1]
    nll, gen, rows = dict(done)[0]
    with torch.no_grad():
        want = model.token_nll(torch.tensor([ids]))[0].numpy()
    assert nll.shape == (39,) and abs(nll - want).max() < 1e-5
    assert len(gen) == 2 and set(rows) == {1} and rows[1]["attn"].shape[2] == 2


def test_numbers_do_not_depend_on_the_prompts_run_before():
    """Aligned prefix chunks: a prompt's scores are the same alone, after others, with reuse
    off, and in a resumed subset, to the last bit."""
    from diffeval.engine import Choice

    model = tiny_model("diff", vocab_size=259)
    g = torch.Generator().manual_seed(5)
    shared = torch.randint(0, 256, (300,), generator=g).tolist()
    queries = [shared[: 250 + 20 * i] + torch.randint(0, 256, (9,), generator=g).tolist() for i in range(4)]
    cands = ((7,), (8, 9), (10, 11, 12))
    work = [[Choice(tuple(q), cands)] for q in queries]

    def run(items, **kw):
        got = {}
        for i, out in Engine(model, align=64, **kw).run(items):
            got.__setitem__(i, [s.logprob for s in out[0]])
        return got

    whole = run(work)
    assert run(work, reuse=False) == whole
    assert run(work[2:]) == {i - 2: whole[i] for i in (2, 3)}
    assert run(work[::-1]) == {3 - i: whole[i] for i in range(4)}


def test_windowed_stop_check_stops_where_decoding_the_whole_output_does():
    """The stop-text check decodes a window of the last tokens; on a real BPE tokenizer (the
    zoo's: byte-level pieces, multi-byte characters, specials) it must stop at the same step
    as decoding everything so far."""
    import random

    import diffeval
    from diffeval.engine import _ends_with_stop

    tok = diffeval.load("zoo:transformer-tiny").tokenizer
    rng = random.Random(0)
    vocab = tok.vocab_size
    texts = ["The magic number is 1234567.\nNext line", "naïve café — 東京\n\n", "a b  c\td", "unknown. unknown"]
    pools = [tok.encode(t) for t in texts]
    stops = ["\n", "\n\n", ".", " unknown", "東", "é —", "67.\nN"]
    checked = 0
    for trial in range(300):
        pool = pools[trial % len(pools)]
        out = [rng.choice(pool) if rng.random() < 0.7 else rng.randrange(vocab) for _ in range(rng.randint(1, 40))]
        for stop in stops:
            naive = next((i for i in range(len(out)) if stop in tok.decode(out[:i + 1])), None)
            fast = next((i for i in range(len(out)) if _ends_with_stop(tok.decode, out[:i + 1], stop)), None)
            assert fast == naive, (out, stop)
            checked += naive is not None
    assert checked > 100  # the stops were actually met, often


@pytest.mark.parametrize("every", [2, 8])
def test_reading_tokens_every_k_steps_gives_the_same_generations_and_counters(every):
    """The device-side decode loop (a host sync every k steps, as on CUDA) stops where the
    per-step loop does: stop ids, stop texts, batches whose rows stop at different steps."""
    model = tiny_model("transformer", vocab_size=259)
    prompts = _prompts()
    decode = lambda ids: bytes(ids).decode("latin-1")  # noqa: E731
    free, _ = _run(model, prompts, stop_ids=(), n=12, batch_size=3)
    stop_text = decode([free[0][4]])  # a text some rows meet early and others late or never
    for kw in (dict(stop_ids={free[1][3]}), dict(stop_ids=(), decode=decode)):
        reqs = [[Generate(tuple(p), 12, stop_text if "decode" in kw else None)] for p in prompts]
        runs = {}
        for k in (1, every):
            engine = Engine(model, stop_ids=frozenset(kw["stop_ids"]), decode=kw.get("decode"), align=16,
                            batch_size=3, sync_every=k)
            runs[k] = ({i: o[0] for i, o in engine.run(reqs)}, engine.counters.generated_tokens)
        assert runs[every] == runs[1]
        assert len({len(o) for o in runs[1][0].values()}) > 1  # rows stopped at different steps
