"""DIFF V2 in the layout of Microsoft's reference code (unilm Diff-Transformer-V2): a float64
decoder written here from that layout's own equations (interleaved RoPE applied directly, query
heads 2i / 2i+1 paired on kv head h // (2H / Hkv) as flash-attn's GQA reads them) gives the
logits of the checkpoint diffeval loads, MHA, GQA and MQA; names in either style, `o_proj` or
`out_proj`; detection; bad checkpoints and configs exit 2 naming the tensor or field."""

import json
import math

import pytest
import torch
from helpers import run_cli, tiny_model
from safetensors.torch import save_file

import diffeval

SHAPES = {"mha": dict(n_heads=4, n_kv_heads=4), "gqa": dict(n_heads=4, n_kv_heads=2),
          "mqa": dict(n_heads=4, n_kv_heads=1), "wide-heads": dict(n_heads=2, n_kv_heads=2, d_head=24)}


def _model(shape: str, **extra):
    model = tiny_model("diff2", **SHAPES[shape], **extra)
    with torch.no_grad():
        g = torch.Generator().manual_seed(11)
        for name, p in model.named_parameters():
            if "lambda_proj" in name:
                p.normal_(0, 0.3, generator=g)  # lambdas that vary by token and head
            elif "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
    return model


def reference_state(model, out_proj: bool = False, hf_names: bool = False) -> dict:
    """A diff2 model's weights written INTO the reference layout, head by head: inside each
    q / k head, half-split row m -> 2m and m + d/2 -> 2m + 1 (interleaved RoPE pairs); heads stay
    where they are; o_proj -> out_proj when asked."""
    d = model.cfg.d_head

    def interleave(w):  # (n * d, C) half-split heads -> interleaved heads
        heads = w.reshape(-1, d, w.shape[-1])
        out = torch.empty_like(heads)
        for m in range(d // 2):
            out[:, 2 * m], out[:, 2 * m + 1] = heads[:, m], heads[:, m + d // 2]
        return out.reshape(w.shape)

    out = {}
    for name, t in model.state_dict().items():
        t = t.detach().clone()
        if name.endswith(("attn.q_proj.weight", "attn.k_proj.weight")):
            t = interleave(t)
        if out_proj:
            name = name.replace(".o_proj.", ".out_proj.")
        if hf_names:
            from diffeval.checkpoints.hf import file_name

            name = file_name(name)
        out[name] = t.contiguous()
    return out


def reference_config(model, **extra) -> dict:
    cfg = model.cfg
    return {"format": "unilm-v2", "vocab_size": cfg.vocab_size, "d_model": cfg.d_model, "num_layers": cfg.n_layers,
            "num_heads": cfg.n_heads, "num_kv_heads": cfg.n_kv_heads, "head_dim": cfg.d_head, "ffn_dim": cfg.d_ff,
            "max_seq_len": cfg.max_seq_len, "rope_theta": cfg.rope.theta, "norm_eps": cfg.norm_eps,
            "tie_embeddings": cfg.tie_embeddings, **extra}


def reference_logits(state: dict, raw: dict, ids: torch.Tensor) -> torch.Tensor:
    """The decoder around MultiheadFlashDiffV2 in float64, from the layout's equations."""
    W = {k: v.double() for k, v in state.items()}
    H, G, d, eps = raw["num_heads"], raw["num_kv_heads"], raw["head_dim"], raw["norm_eps"]
    B, T = ids.shape
    group = 2 * H // G  # query heads per kv head (flash-attn GQA)

    def rms(x, w):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    freq = raw["rope_theta"] ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # pair m
    ang = torch.arange(T, dtype=torch.float64)[:, None] * freq[None]  # (T, d/2)
    cos, sin = ang.cos()[:, None], ang.sin()[:, None]  # (T, 1, d/2)

    def rope(t):  # (B, T, n, d): rotate (t[2m], t[2m+1]) by angle m
        even, odd = t[..., 0::2], t[..., 1::2]
        return torch.stack((even * cos - odd * sin, even * sin + odd * cos), -1).flatten(-2)

    causal = torch.ones(T, T, dtype=torch.bool).tril()
    h = W["embed.weight"][ids]  # (B, T, C)
    for i in range(raw["num_layers"]):
        p = f"layers.{i}."
        x = rms(h, W[p + "attn_norm.weight"])
        q = rope((x @ W[p + "attn.q_proj.weight"].T).view(B, T, 2 * H, d))
        k = rope((x @ W[p + "attn.k_proj.weight"].T).view(B, T, G, d))
        v = (x @ W[p + "attn.v_proj.weight"].T).view(B, T, G, d)
        heads = []
        for hq in range(2 * H):
            g = hq // group
            s = (q[:, :, hq] @ k[:, :, g].transpose(1, 2) / math.sqrt(d)).masked_fill(~causal, -math.inf)
            heads.append(torch.softmax(s, -1) @ v[:, :, g])  # (B, T, d)
        lam = torch.sigmoid(x @ W[p + "attn.lambda_proj.weight"].T)  # (B, T, H)
        out = torch.cat([heads[2 * j] - lam[..., j:j + 1] * heads[2 * j + 1] for j in range(H)], -1)
        o = W.get(p + "attn.o_proj.weight", W.get(p + "attn.out_proj.weight"))
        h = h + out @ o.T
        x = rms(h, W[p + "mlp_norm.weight"])
        gate, up = x @ W[p + "mlp.gate_proj.weight"].T, x @ W[p + "mlp.up_proj.weight"].T
        h = h + (torch.nn.functional.silu(gate) * up) @ W[p + "mlp.down_proj.weight"].T
    h = rms(h, W["norm.weight"])
    return h @ W["embed.weight" if raw["tie_embeddings"] else "lm_head.weight"].T


def _write(model, directory, config=True, **options):
    directory.mkdir(parents=True, exist_ok=True)
    state = reference_state(model, **options)
    save_file(state, str(directory / "model.safetensors"))
    if config:
        (directory / "config.json").write_text(json.dumps(reference_config(model)))
    return directory


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_reference_decoder_gives_the_loaded_logits_in_float64(shape, tied, tmp_path):
    model = _model(shape, tie_embeddings=tied)
    directory = _write(model, tmp_path / "v2")
    loaded = diffeval.load(str(directory), dtype=torch.float64, backend="reference")
    assert loaded.info.format == "unilm-v2" and loaded.model.cfg.family == "diff2"
    ids = torch.randint(0, 300, (2, 45), generator=torch.Generator().manual_seed(5))
    want = reference_logits(reference_state(model), reference_config(model), ids)
    with torch.no_grad():
        got = loaded.model(ids)
    assert ((got - want).abs().max() / want.abs().max()).item() <= 1e-10  # measured ~1e-15


@pytest.mark.parametrize("options", [{}, {"out_proj": True}, {"hf_names": True}, {"out_proj": True, "hf_names": True}],
                         ids=["o_proj", "out_proj", "hf-names", "hf-names-out_proj"])
def test_reference_checkpoint_loads_to_the_model_it_was_written_from(options, tmp_path):
    model = _model("gqa")
    loaded = diffeval.load(str(_write(model, tmp_path / "v2", **options)))
    ids = torch.randint(0, 300, (2, 60), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert (loaded.model(ids) - model(ids)).abs().max().item() <= 1e-5


def test_detection_and_format_option(tmp_path, capsys):
    model = _model("mha")
    ids = torch.randint(0, 300, (1, 40), generator=torch.Generator().manual_seed(7))
    # native config, out_proj + lambda_proj: detected from the names
    named = tmp_path / "named"
    diffeval.save(model, named)
    save_file(reference_state(model, out_proj=True), str(named / "model.safetensors"))
    loaded = diffeval.load(str(named))
    assert loaded.info.format == "native config, unilm-v2 weights"
    # native config, o_proj: the names are the internal ones; only --format unilm-v2 reads them right
    plain = tmp_path / "plain"
    diffeval.save(model, plain)
    save_file(reference_state(model), str(plain / "model.safetensors"))
    with torch.no_grad():
        assert (loaded.model(ids) - model(ids)).abs().max().item() <= 1e-5
        right = diffeval.load(str(plain), format="unilm-v2").model(ids)
        wrong = diffeval.load(str(plain)).model(ids)
    assert (right - model(ids)).abs().max().item() <= 1e-5
    assert (wrong - model(ids)).abs().max().item() > 1e-3  # the RoPE pairing is what the format changes
    assert run_cli(["info", "--ckpt", str(plain), "--format", "unilm-v2"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "native config, unilm-v2 weights" in out and "differential V2" in out
    assert run_cli(["info", "--ckpt", str(_write(model, tmp_path / "v2"))]) == 0
    assert "unilm-v2 (unilm Diff-Transformer-V2)" in " ".join(capsys.readouterr().out.split())
    transformer = tmp_path / "transformer"
    diffeval.save(tiny_model("transformer"), transformer)
    assert run_cli(["info", "--ckpt", str(transformer), "--format", "unilm-v2"]) == 2
    assert "'lambda_proj'" in capsys.readouterr().err


def _bad(tmp_path, change):
    model = _model("gqa")
    directory = tmp_path / "bad"
    directory.mkdir()
    state, config = reference_state(model), reference_config(model)
    change(state, config)
    save_file(state, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _extra_q_head(state, config):
    q = state["layers.0.attn.q_proj.weight"]
    state["layers.0.attn.q_proj.weight"] = torch.cat((q, q[:16]))  # a ninth head of width 16


def _short_k(state, config):
    state["layers.1.attn.k_proj.weight"] = state["layers.1.attn.k_proj.weight"][:-4]  # not whole heads


def _both_output_names(state, config):
    state["layers.0.attn.out_proj.weight"] = state["layers.0.attn.o_proj.weight"].clone()


def _no_lambda(state, config):
    for i in range(2):
        del state[f"layers.{i}.attn.lambda_proj.weight"]


def _lambda_bias(state, config):
    state["layers.0.attn.lambda_proj.bias"] = torch.zeros(4)


@pytest.mark.parametrize("change,words", [
    (_extra_q_head, ["'layers.0.attn.q_proj.weight'", "9 heads of width 16, expected 8"]),
    (_short_k, ["'layers.1.attn.k_proj.weight'", "whole number of heads"]),
    (_both_output_names, ["'layers.0.attn.out_proj.weight'", "o_proj"]),
    (_no_lambda, ["'lambda_proj'", "unilm-v2"]),
    (_lambda_bias, ["unexpected tensor", "'layers.0.attn.lambda_proj.bias'"]),
], ids=["extra-q-head", "short-k", "both-output-names", "no-lambda", "lambda-bias"])
def test_bad_reference_checkpoints_exit_2_naming_the_tensor(tmp_path, capsys, change, words):
    assert run_cli(["info", "--ckpt", str(_bad(tmp_path, change))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err


@pytest.mark.parametrize("change,field", [
    ({"num_kv_heads": 8}, "num_kv_heads"),  # groups of one query head: no pair
    ({"num_kv_heads": 3}, "num_kv_heads"),
    ({"num_heads": 0}, "num_heads"),
    ({"ffn_dim": None}, "ffn_dim"),
    ({"embed_dim": 64}, "embed_dim"),  # V1's name is not a V2 field
    ({"head_dim": None, "d_model": 66}, "d_model"),
])
def test_bad_reference_configs_exit_2_naming_the_field(tmp_path, capsys, change, field):
    def edit(state, config):
        config.update(change)
        for key in [k for k, v in change.items() if v is None]:
            del config[key]

    assert run_cli(["info", "--ckpt", str(_bad(tmp_path, edit))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err, err
