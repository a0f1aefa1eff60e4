"""RoPE scaling and partial rotary: YaRN frequencies and attention factor against transformers'
own functions and against its Llama / Qwen2 / DiffLlama logits beyond the original context;
partial rotary against transformers' Qwen3.5 rotary and apply_rotary_pos_emb and its logits;
every family built natively with both (cache and prefix paths equal to the full forward);
bad values refused in one line naming the field."""

import json

import pytest
import torch
from helpers import run_cli, tiny_config
from hf_models import hf_model

import diffeval
from diffeval.errors import ConfigError
from diffeval.models import Decoder
from diffeval.models.config import RopeConfig
from diffeval.models.layers import Rotary, apply_rotary, rope_inv_freq

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "rope_theta": 10000.0}
YARN_CASES = [
    ("llama", dict(n_kv=4), YARN),  # MHA
    ("llama", dict(n_kv=2), {**YARN, "beta_fast": 8, "beta_slow": 2, "mscale": 0.707, "mscale_all_dim": 1.0,
                             "truncate": False}),  # GQA, every optional field
    ("qwen2", dict(n_kv=2), {**YARN, "factor": 3.0, "rope_theta": 1e6, "attention_factor": 1.3}),
    ("diffllama", dict(n_kv=4), YARN),
    ("diffllama", dict(n_kv=2), {**YARN, "factor": 8.0}),
]


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 300, (2, 80), generator=torch.Generator().manual_seed(1))  # 80 > 32 original positions


@pytest.mark.parametrize("kind,options,rope", YARN_CASES, ids=[f"{k}-{o}-{r}" for k, o, r in YARN_CASES])
def test_yarn_logits_match_transformers_beyond_the_original_context(hf_dir, ids, kind, options, rope):
    directory = hf_dir(kind, rope=rope, max_pos=128, **options)
    with torch.no_grad():
        expected = hf_model(directory)(ids).logits
        loaded = diffeval.load(str(directory), backend="reference")
        ours = loaded.model(ids)
    assert loaded.model.cfg.rope.type == "yarn"
    assert (ours - expected).abs().max().item() <= 1e-4


def test_yarn_in_the_legacy_rope_scaling_form(hf_dir, ids, tmp_path):
    import shutil

    directory = shutil.copytree(hf_dir("llama", n_kv=2, rope=YARN, max_pos=128), tmp_path / "legacy")
    raw = json.loads((directory / "config.json").read_text())
    raw.pop("rope_parameters")
    raw.update(rope_theta=10000.0, rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32})
    (directory / "config.json").write_text(json.dumps(raw))
    with torch.no_grad():
        expected = hf_model(directory)(ids).logits
        ours = diffeval.load(str(directory)).model(ids)
    assert (ours - expected).abs().max().item() <= 1e-4


def test_yarn_changes_the_model(hf_dir, ids):
    """Guard against a scaling or its attention factor silently ignored."""
    plain = diffeval.load(str(hf_dir("llama", n_kv=2, rope={"rope_type": "default", "rope_theta": 10000.0},
                                     max_pos=128))).model
    yarn = diffeval.load(str(hf_dir("llama", n_kv=2, rope=YARN, max_pos=128))).model
    assert yarn.rotary.scale == pytest.approx(0.1 * torch.tensor(4.0).log().item() + 1)
    cos, sin = yarn.rotary.cos_sin(torch.arange(80), torch.float32)
    torch.testing.assert_close(cos**2 + sin**2, torch.full_like(cos, yarn.rotary.scale**2))
    with torch.no_grad():
        assert (yarn(ids) - plain(ids)).abs().max() > 1e-3


@pytest.mark.parametrize("params", [
    YARN,
    {**YARN, "partial_rotary_factor": 0.5},
    {**YARN, "beta_fast": 4, "beta_slow": 2, "truncate": False},
    {**YARN, "mscale": 1.0, "mscale_all_dim": 0.5, "rope_theta": 500000.0},
    {**YARN, "factor": 0.5},  # below 1: no attention factor
    {**YARN, "attention_factor": 0.9, "original_max_position_embeddings": 8},
], ids=["plain", "partial", "betas", "mscale", "factor-below-1", "attention-factor"])
def test_yarn_parameters_match_transformers_function(params):
    import transformers as tf
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = tf.LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=16, max_position_embeddings=128,
                            rope_parameters=dict(params))
    want_inv, want_scale = ROPE_INIT_FUNCTIONS["yarn"](config, "cpu")
    rope = RopeConfig(theta=params["rope_theta"], type="yarn", factor=params["factor"],
                      original_max_position_embeddings=params["original_max_position_embeddings"],
                      fraction=params.get("partial_rotary_factor", 1.0), beta_fast=params.get("beta_fast", 32),
                      beta_slow=params.get("beta_slow", 1), mscale=params.get("mscale"),
                      mscale_all_dim=params.get("mscale_all_dim"), attention_factor=params.get("attention_factor"),
                      truncate=params.get("truncate", True))
    got = rope_inv_freq(rope, 16)
    assert got.shape == want_inv.shape
    torch.testing.assert_close(got.float(), want_inv, rtol=1e-6, atol=0)
    assert rope.attention_scaling() == pytest.approx(want_scale, rel=1e-12)


@pytest.mark.parametrize("fraction,d_head", [(0.25, 16), (0.5, 32), (1.0, 16)])
def test_partial_rotary_matches_qwen3_5_apply_rotary_pos_emb(fraction, d_head):
    import transformers as tf
    from transformers.models.qwen3_5 import modeling_qwen3_5 as q35

    config = tf.Qwen3_5TextConfig(hidden_size=4 * d_head, num_attention_heads=4, num_key_value_heads=2,
                                  head_dim=d_head, num_hidden_layers=1, layer_types=["full_attention"],
                                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                   "partial_rotary_factor": fraction})
    T = 37
    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(2, 4, T, d_head, generator=g), torch.randn(2, 2, T, d_head, generator=g)
    positions = torch.arange(5, 5 + T)  # a prefix already cached
    cos_hf, sin_hf = q35.Qwen3_5TextRotaryEmbedding(config)(q, positions[None].expand(2, T))
    want_q, want_k = q35.apply_rotary_pos_emb(q, k, cos_hf, sin_hf)
    rotary = Rotary(RopeConfig(fraction=fraction), d_head)
    cos, sin = rotary.cos_sin(positions, torch.float32)
    assert cos.shape == (T, int(d_head * fraction))
    torch.testing.assert_close(apply_rotary(q, cos, sin), want_q, rtol=0, atol=1e-5)
    torch.testing.assert_close(apply_rotary(k, cos, sin), want_k, rtol=0, atol=1e-5)
    assert torch.equal(apply_rotary(q, cos, sin)[..., cos.shape[-1]:], q[..., cos.shape[-1]:])  # passed through


@pytest.mark.parametrize("rope", [
    {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
    {"rope_type": "default", "rope_theta": 10000.0},  # Qwen3.5's own default: 0.25
    {**YARN, "partial_rotary_factor": 0.5},
], ids=["partial", "partial-by-default", "yarn-partial"])
def test_qwen3_5_partial_rotary_logits_match_transformers(hf_dir, ids, rope):
    directory = hf_dir("qwen3_5", n_kv=2, rope=rope, max_pos=128)
    with torch.no_grad():
        expected = hf_model(directory)(ids).logits
        loaded = diffeval.load(str(directory))
        ours = loaded.model(ids)
    assert loaded.model.rotary.cos_sin(torch.arange(4), torch.float32)[0].shape[-1] < loaded.model.cfg.d_head
    assert (ours - expected).abs().max().item() <= 1e-4


NATIVE_ROPES = {
    "yarn": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "beta_fast": 16.0},
    "partial": {"fraction": 0.5, "theta": 500.0},
    "yarn-partial": {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 16, "fraction": 0.5,
                     "attention_factor": 1.2},
}


@pytest.mark.parametrize("family", ["transformer", "sha", "diff", "diff2", "gated", "sinks"])
@pytest.mark.parametrize("rope", list(NATIVE_ROPES))
def test_native_models_run_with_yarn_and_partial_rotary_cache_equal(family, rope):
    cfg = tiny_config(family, rope=NATIVE_ROPES[rope])
    model = Decoder(cfg, backend="reference")
    model.init_weights(0)
    model.eval()
    ids = torch.randint(0, 300, (2, 70), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache()
        parts = [model(ids[:, :30], cache), model(ids[:, 30:64], cache)]
        parts += [model(ids[:, t:t + 1], cache) for t in range(64, 70)]
        fork = cache.fork()
        fork.truncate(50)
        again = model(ids[:, 50:], fork)
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=0, atol=1e-5)
    torch.testing.assert_close(again, full[:, 50:], rtol=0, atol=1e-5)
    plain = Decoder(tiny_config(family), backend="reference")
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert (plain.eval()(ids) - full).abs().max() > 1e-4  # the rope setting is not ignored


def test_native_checkpoint_with_yarn_round_trips(tmp_path):
    model = Decoder(tiny_config("diff2", rope=NATIVE_ROPES["yarn-partial"]))
    model.init_weights(1)
    diffeval.save(model.eval(), tmp_path / "m")
    raw = json.loads((tmp_path / "m" / "config.json").read_text())
    assert raw["rope"]["type"] == "yarn" and raw["rope"]["fraction"] == 0.5 and "mscale" not in raw["rope"]
    loaded = diffeval.load(str(tmp_path / "m"))
    assert loaded.model.cfg.rope == model.cfg.rope
    assert "beta_fast" not in diffeval.load("zoo:transformer-tiny").info.rope  # defaults stay out of records
    ids = torch.randint(0, 300, (1, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids), model(ids))


@pytest.mark.parametrize("rope,field", [
    ({"fraction": 0.0}, "rope.fraction"),
    ({"fraction": 1.5}, "rope.fraction"),
    ({"fraction": 0.2}, "rope.fraction"),  # 0.2 x d_head 16 = 3 rotary dims: odd
    ({"type": "yarn", "factor": 4.0, "beta_fast": 1.0, "beta_slow": 2.0}, "beta_fast"),
    ({"type": "yarn", "factor": 4.0, "attention_factor": -1.0}, "rope.attention_factor"),
    ({"type": "yarn", "factor": 4.0, "truncate": "yes"}, "rope.truncate"),
    ({"type": "yarn", "factor": 4.0, "mscale": "big"}, "rope.mscale"),
    ({"type": "yarn", "factor": 0.0}, "factor"),
])
def test_bad_native_rope_values_name_the_field(rope, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as exc:
        Decoder(tiny_config("transformer", rope=rope))
    assert "\n" not in str(exc.value)


def test_bad_native_checkpoint_rope_exits_2_naming_the_file(tmp_path, capsys):
    diffeval.save(Decoder(tiny_config("transformer")), tmp_path / "m")
    raw = json.loads((tmp_path / "m" / "config.json").read_text())
    raw["rope"]["fraction"] = 0.2
    (tmp_path / "m" / "config.json").write_text(json.dumps(raw))
    assert run_cli(["info", "--ckpt", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "config.json" in err and "rope.fraction (0.2)" in err, err


def _edit(directory, **changes):
    raw = json.loads((directory / "config.json").read_text())
    raw.update(changes)
    (directory / "config.json").write_text(json.dumps(raw))


@pytest.mark.parametrize("rope,words", [
    ({"rope_type": "yarn", "rope_theta": 10000.0}, "'factor'"),
    ({**YARN, "factor": None}, "'factor'"),
    ({**YARN, "beta_fast": "fast"}, "rope_scaling.beta_fast"),
    ({**YARN, "truncate": 1}, "rope_scaling.truncate"),
    ({**YARN, "attention_factor": 0.0}, "rope.attention_factor"),
    ({"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.1}, "rope.fraction"),
    ({"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": "half"}, "partial_rotary_factor"),
    ({"rope_type": "longrope", "rope_theta": 10000.0, "factor": 2.0}, "longrope"),
], ids=["yarn-no-factor", "yarn-null-factor", "beta-text", "truncate-int", "attention-factor-0", "partial-odd",
        "partial-text", "longrope"])
def test_bad_hf_rope_values_exit_2_naming_the_field(hf_dir, tmp_path, capsys, rope, words):
    import shutil

    directory = shutil.copytree(hf_dir("llama", n_kv=2), tmp_path / "bad")
    _edit(directory, rope_parameters=rope)
    capsys.readouterr()  # the checkpoint's own writing progress
    assert run_cli(["info", "--ckpt", str(directory)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "config.json" in err, err


def test_info_shows_yarn_and_partial_rotary(hf_dir, capsys):
    directory = hf_dir("qwen3_5", n_kv=2, rope={**YARN, "partial_rotary_factor": 0.5}, max_pos=128)
    capsys.readouterr()
    assert run_cli(["info", "--ckpt", str(directory)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "yarn x4 (original 32 positions, cos/sin x1.139)" in out and "rotary on 8 of 16 dims" in out, out
