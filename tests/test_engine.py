"""The engine: prefix reuse and batching give the same generations as plain greedy decoding."""

import torch

from diffeval.engine import Engine, Generate, common_prefix
from diffeval.models import greedy_generate
from helpers import tiny_model


def _prompts():
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (120,), generator=g).tolist()
    tails = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (5, 5, 9, 5, 1)]
    prompts = [base + t for t in tails] + [base[:60] + tails[2], base + tails[0]]  # a duplicate too
    return prompts


def _run(model, prompts, **kw):
    outs = {}
    engine = Engine(model, stop_ids=frozenset({3}), **kw)
    engine.run([[Generate(tuple(p), 6, None)] for p in prompts], lambda i, out: outs.__setitem__(i, out[0]))
    return [outs[i] for i in range(len(prompts))], engine.counters


def test_reuse_and_batching_match_independent_greedy_decoding():
    model = tiny_model("diff", vocab_size=259)
    prompts = _prompts()
    with torch.no_grad():
        want = [greedy_generate(model, p, model.new_cache(), 6, stop_ids={3}) for p in prompts]
    plain, plain_stats = _run(model, prompts, reuse=False)
    reused, reuse_stats = _run(model, prompts)
    batched, _ = _run(model, prompts, batch_size=3)
    assert plain == want and reused == want and batched == want
    assert plain_stats.prefilled_tokens == sum(len(p) for p in prompts)
    assert reuse_stats.prefilled_tokens < 0.5 * plain_stats.prefilled_tokens
    assert reuse_stats.requests == len(prompts)


def test_stop_text_ends_a_continuation():
    model = tiny_model("transformer", vocab_size=259)
    prompt = list(range(40, 80))
    with torch.no_grad():
        free = greedy_generate(model, prompt, model.new_cache(), 6)
    stop_at = bytes([free[1]]).decode("latin-1")
    outs = {}
    engine = Engine(model, decode=lambda ids: bytes(ids).decode("latin-1"))
    engine.run([[Generate(tuple(prompt), 6, stop_at)]], lambda i, out: outs.__setitem__(i, out[0]))
    first = next(k for k, t in enumerate(free) if bytes([t]).decode("latin-1") == stop_at)
    assert outs[0] == free[: first + 1]


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2]) == 2
