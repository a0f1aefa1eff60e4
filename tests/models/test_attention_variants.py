"""The attention variants DIFF is compared with: `gated`, `sinks`, q/k norms and sliding windows.
Module parity with transformers' gpt-oss attention (sinks, sliding window), exact properties of
each variant, and every fast path (sdpa, cache continuation, batch) against the reference."""

import math

import pytest
import torch

from diffeval.errors import ConfigError
from diffeval.kernels import resolve_backend
from diffeval.kernels import sdpa as sdpa_module
from diffeval.models.config import ModelConfig
from diffeval.models.decoder import Decoder
from diffeval.models.inspect import Capture, ForwardContext
from diffeval.models.sinks import SinkAttention

VARIANTS = [
    ("gated", dict(gate="element")),
    ("gated", dict(gate="head", qk_norm=True)),
    ("sinks", dict()),
    ("sinks", dict(sliding_window=6, layer_types=["sliding_attention", "full_attention"])),
    ("transformer", dict(qk_norm=True, sliding_window=9)),
    ("diff", dict(qk_norm=True)),
    ("diff2", dict(qk_norm=True)),
]


def _model(family, dtype=torch.float32, seed=0, vocab=97, **extra):
    cfg = ModelConfig(family=family, vocab_size=vocab, d_model=64, n_layers=2, n_heads=4, d_ff=96, n_kv_heads=2,
                      **extra)
    model = Decoder(cfg)
    model.init_weights(seed)
    with torch.no_grad():  # non-trivial norms, sinks and gates
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("sinks"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif "g_proj" in name:
                p.mul_(20)
    return model.to(dtype).eval()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family,extra", VARIANTS, ids=[f"{f}-{sorted(e)}" for f, e in VARIANTS])
def test_fast_paths_match_the_reference(family, extra, ids):
    model = _model(family, torch.float64, **extra)
    with torch.no_grad():
        model.set_backend("reference")
        want = model(ids)
        model.set_backend("sdpa")
        assert (model(ids) - want).abs().max() < 1e-10
        for split in (1, 17, 39):  # continuing a cached prefix, decoding token by token at the end
            cache = model.new_cache()
            parts = [model(ids[:, :split], cache)] + [model(ids[:, t:t + 1], cache) for t in range(split, 40)]
            assert (torch.cat(parts, 1) - want).abs().max() < 1e-10, split


def test_float32_sdpa_agrees(ids):
    for family, extra in VARIANTS:
        model = _model(family, **extra)
        with torch.no_grad():
            model.set_backend("reference")
            want = model(ids)
            model.set_backend("sdpa")
            assert (model(ids) - want).abs().max() < 1e-5, family


def test_the_variants_change_the_model(ids):
    """Guard against an option silently ignored: each variant differs from the plain model."""
    plain = _model("transformer")
    with torch.no_grad():
        base = plain(ids)
        for family, extra in VARIANTS[:5]:
            other = _model(family, **extra)
            state = {k: v for k, v in other.state_dict().items() if k in plain.state_dict()}
            other.load_state_dict({**other.state_dict(), **{k: plain.state_dict()[k] for k in state}})
            assert (other(ids) - base).abs().max() > 1e-3, (family, extra)


def test_gate_of_one_half_halves_the_heads_output(ids):
    """g_proj = 0 makes every gate sigmoid(0) = 1/2: the gated model is the plain model with
    its output projections halved (element and head gates alike)."""
    for gate in ("element", "head"):
        gated = _model("gated", torch.float64, gate=gate)
        plain = _model("transformer", torch.float64)
        with torch.no_grad():
            state = gated.state_dict()
            for name in list(state):
                if "g_proj" in name:
                    state[name].zero_()
            plain_state = {k: v.clone() for k, v in state.items() if "g_proj" not in k}
            for name in plain_state:
                if name.endswith("attn.o_proj.weight"):
                    plain_state[name] *= 0.5
            plain.load_state_dict(plain_state)
            assert (gated(ids) - plain(ids)).abs().max() < 1e-12


def test_sink_rows_and_limits():
    """A sink s_h scales each row by sigmoid(lse - s_h); s -> -inf is plain softmax."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 4, 12, 8, generator=g, dtype=torch.float64) for _ in range(3))
    sinks = torch.tensor([-1e4, 0.0, 1.0, 5.0], dtype=torch.float64)
    ref = resolve_backend("reference")
    out = ref.attend(q, k, v, scale=0.3, sinks=sinks)
    plain = ref.attend(q, k, v, scale=0.3)
    logits = (q @ k.transpose(-1, -2)) * 0.3
    logits = logits.masked_fill(torch.ones(12, 12, dtype=torch.bool).triu(1), -math.inf)
    lse = torch.logsumexp(logits, -1)  # (1, 4, 12)
    factor = torch.sigmoid(lse - sinks[None, :, None])[..., None]
    assert (out - plain * factor).abs().max() < 1e-12
    assert (out[:, 0] - plain[:, 0]).abs().max() < 1e-12


def test_window_covering_every_key_is_full_attention(ids):
    windowed = _model("sinks", sliding_window=40)
    full = _model("sinks")
    full.load_state_dict(windowed.state_dict())
    narrow = _model("sinks", sliding_window=3)
    narrow.load_state_dict(windowed.state_dict())
    with torch.no_grad():
        assert (windowed(ids) - full(ids)).abs().max() == 0
        assert (narrow(ids) - full(ids)).abs().max() > 1e-3


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("shape", [(30, 30), (1, 50), (10, 50), (8, 1100)])
def test_sink_key_path_matches(monkeypatch, window, shape):
    """The device-independent path (the sink as one more key) and the CPU's log-sum-exp path
    agree with the reference."""
    Tq, Tk = shape
    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, 4, Tq, 16, generator=g)
    k, v = torch.randn(2, 2, Tk, 16, generator=g), torch.randn(2, 2, Tk, 16, generator=g)
    sinks = torch.randn(4, generator=g)
    want = resolve_backend("reference").attend(q, k, v, scale=0.25, sinks=sinks, window=window)
    fused = resolve_backend("sdpa").attend(q, k, v, scale=0.25, sinks=sinks, window=window)
    monkeypatch.setattr(sdpa_module, "_flash_cpu", lambda: None)
    generic = resolve_backend("sdpa").attend(q, k, v, scale=0.25, sinks=sinks, window=window)
    assert (fused - want).abs().max() < 1e-5
    assert (generic - want).abs().max() < 1e-5


def test_captured_rows_of_sinks_and_windows(ids):
    model = _model("sinks", torch.float64, sliding_window=6, layer_types=["sliding_attention", "full_attention"])
    cap = Capture([0, 10, 39])
    with torch.no_grad():
        model(ids, capture=cap, logits="none")
    sliding, full = cap.rows[0]["attn"], cap.rows[1]["attn"]
    assert (sliding[:, :, 1, :5] == 0).all() and (sliding[:, :, 1, 5:11] > 0).all()  # keys 5..10 of query 10
    assert (full[:, :, 1, :11] > 0).all()
    assert (full.sum(-1) < 1).all()  # the sink takes a share of every row


def test_captured_gates(ids):
    model = _model("gated", gate="element")
    cap = Capture([3, 20])
    with torch.no_grad():
        model(ids, capture=cap, logits="none")
        x = model.layers[0].attn_norm(model.embed(ids))
        gates = model.layers[0].attn.gates(x)  # (B, H, T, d)
    assert torch.allclose(cap.rows[0]["gate"], gates[:, :, [3, 20]].mean(-1))


def test_config_errors():
    base = dict(vocab_size=97, d_model=64, n_layers=2, n_heads=4, d_ff=96)
    with pytest.raises(ConfigError, match="gate"):
        ModelConfig(family="gated", gate="channel", **base)
    with pytest.raises(ConfigError, match="family 'gated'"):
        ModelConfig(family="transformer", gate="head", **base)
    with pytest.raises(ConfigError, match="sliding_window"):
        ModelConfig(family="diff", sliding_window=8, **base)
    with pytest.raises(ConfigError, match="one type per layer"):
        ModelConfig(family="sinks", sliding_window=8, layer_types=["sliding_attention"], **base)
    with pytest.raises(ConfigError, match="sliding_window is not set"):
        ModelConfig(family="sinks", layer_types=["sliding_attention", "full_attention"], **base)
    with pytest.raises(ConfigError, match="qk_norm"):
        ModelConfig(family="transformer", qk_norm="yes", **base)


def test_gpt_oss_attention_module_parity():
    """SinkAttention against transformers' GptOssAttention on the same weights and inputs, in a
    GptOss model whose sliding and full layers both run (masks are transformers' own)."""
    tf = pytest.importorskip("transformers")
    config = tf.GptOssConfig(
        vocab_size=97, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, num_local_experts=2, num_experts_per_tok=1, sliding_window=6,
        layer_types=["sliding_attention", "full_attention"], max_position_embeddings=256,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, attention_bias=True,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = tf.GptOssForCausalLM(config).eval()
    seen = {}

    def hook(module, args, kwargs, output):
        seen[module.layer_idx] = (kwargs["hidden_states"], output[0])

    for layer in hf.model.layers:
        with torch.no_grad():
            layer.self_attn.sinks.normal_(0, 1)
        layer.self_attn.register_forward_hook(hook, with_kwargs=True)
    ids = torch.randint(0, 97, (2, 30), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        hf(ids)
    cfg = ModelConfig(family="sinks", vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_head=16,
                      d_ff=64, qkv_bias=True, o_bias=True, sliding_window=6,
                      layer_types=["sliding_attention", "full_attention"])
    rotary = Decoder(cfg).rotary
    for i, layer in enumerate(hf.model.layers):
        ours = SinkAttention(cfg, i).eval()
        ours.load_state_dict({k: v for k, v in layer.self_attn.state_dict().items()})
        x, want = seen[i]
        cos, sin = rotary.cos_sin(torch.arange(30), x.dtype)
        for backend in ("reference", "sdpa"):
            with torch.no_grad():
                got = ours(x, cos, sin, None, ForwardContext(resolve_backend(backend), None, None, None, 2))
            assert (got - want).abs().max() < 1e-5, (i, backend)


@pytest.mark.parametrize("family,extra,shown", [
    ("gated", dict(gate="head", qk_norm=True), ["head-wise: out * sigmoid(g_proj x), g_proj 64 -> 4", "q/k norm"]),
    ("sinks", dict(sliding_window=6, layer_types=["sliding_attention", "full_attention"]),
     ["one learnable logit per head (4)", "6 keys in layer(s) 0"]),
])
def test_variants_save_natively_and_info_shows_them(family, extra, shown, tmp_path, capsys, ids):
    from helpers import run_cli

    import diffeval

    model = _model(family, vocab=259, **extra)  # the byte tokenizer's ids
    diffeval.save(model, tmp_path / "m")
    loaded = diffeval.load(str(tmp_path / "m"))
    assert loaded.model.cfg == model.cfg
    with torch.no_grad():
        assert torch.equal(model(ids), loaded.model(ids))
    assert run_cli(["info", "--ckpt", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert all(s in out for s in shown), out


@pytest.mark.parametrize("family,extra", VARIANTS[:5], ids=[f"{f}-{sorted(e)}" for f, e in VARIANTS[:5]])
def test_training_gradients_match_the_reference(family, extra, ids):
    """Training differentiates the fast path exactly (the sinks' fused log-sum-exp is for inference)."""
    grads = {}
    for backend in ("reference", "sdpa"):
        model = _model(family, **extra).train()
        model.set_backend(backend)
        model.project(model.hidden(ids)).logsumexp(-1).mean().backward()
        grads[backend] = {n: p.grad for n, p in model.named_parameters()}
    for name, want in grads["reference"].items():
        assert (grads["sdpa"][name] - want).abs().max() <= 1e-5 * (want.abs().max() + 1e-6), name
