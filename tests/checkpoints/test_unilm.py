"""DIFF V1 in the layout of Microsoft's reference code (unilm Diff-Transformer): the reference
layer written here from REFERENCE.md equals the converted layer; checkpoints written in that
layout (interleaved, with and without subln.weight, MHA and GQA, safetensors and pickle)
load to the logits of the same model; bad ones exit 2 naming the tensor."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

import diffeval
from diffeval.kernels import resolve_backend
from diffeval.models.inspect import ForwardContext
from helpers import run_cli, tiny_model, unilm_config, unilm_state

SHAPES = {"mha": dict(n_heads=2, n_kv_heads=4), "gqa": dict(n_heads=2, n_kv_heads=2),
          "gqa-2groups": dict(n_heads=4, n_kv_heads=4, d_model=64)}


def _model(shape: str, subln: bool, **extra):
    model = tiny_model("diff", diff_norm_weight=subln, **SHAPES[shape], **extra)
    with torch.no_grad():
        g = torch.Generator().manual_seed(7)
        for name, p in model.named_parameters():
            if ".lambda_" in name:
                p.normal_(0, 0.3, generator=g)
            elif name.endswith("subln.weight"):
                p.normal_(1.0, 0.3, generator=g)
    return model


def reference_layer(x, state, prefix, cfg, layer_idx):
    """The reference code's attention in float64 from its layout: interleaved RoPE pairs
    (2m, 2m+1), Q1/Q2 = projection heads 2i/2i+1, differential head i reading key/value group
    i // n_rep (as its flash files do), value head g a contiguous 2d slice, subln, out_proj."""
    x = x.double()
    B, T, _ = x.shape
    H, d, G = cfg.n_heads, cfg.d_head, cfg.n_kv_heads // 2
    n_rep = H // G
    W = {k: state[f"{prefix}.{k}.weight"].double() for k in ("q_proj", "k_proj", "v_proj", "out_proj")}
    q = (x @ W["q_proj"].T).view(B, T, 2 * H, d)
    k = (x @ W["k_proj"].T).view(B, T, 2 * G, d)
    v = (x @ W["v_proj"].T).view(B, T, G, 2 * d)
    freq = cfg.rope.theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # pair m
    ang = torch.arange(T, dtype=torch.float64)[:, None] * freq[None]  # (T, d/2)
    cos, sin = ang.cos()[:, None], ang.sin()[:, None]

    def rope(t):  # rotate (t[2m], t[2m+1]) by angle m
        even, odd = t[..., 0::2], t[..., 1::2]
        return torch.stack((even * cos - odd * sin, even * sin + odd * cos), -1).flatten(-2)

    q, k = rope(q), rope(k)
    lam_init = 0.8 - 0.6 * math.exp(-0.3 * layer_idx)
    lq = {n: state[f"{prefix}.lambda_{n}"].double() for n in ("q1", "k1", "q2", "k2")}
    lam = torch.exp((lq["q1"] * lq["k1"]).sum()) - torch.exp((lq["q2"] * lq["k2"]).sum()) + lam_init
    causal = torch.ones(T, T, dtype=torch.bool).tril()

    def softmax(qh, kh):
        return torch.softmax((qh @ kh.transpose(1, 2) / math.sqrt(d)).masked_fill(~causal, -math.inf), -1)

    heads = []
    for i in range(H):
        g = i // n_rep
        a1 = softmax(q[:, :, 2 * i], k[:, :, 2 * g])
        a2 = softmax(q[:, :, 2 * i + 1], k[:, :, 2 * g + 1])
        h = (a1 - lam * a2) @ v[:, :, g]  # (B, T, 2d)
        h = h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)
        if f"{prefix}.subln.weight" in state:
            h = h * state[f"{prefix}.subln.weight"].double()
        heads.append((1 - lam_init) * h)
    return torch.cat(heads, -1) @ W["out_proj"].T


def _write(model, directory, hf_names=False, pickle=False, drop=(), **config):
    directory.mkdir(parents=True, exist_ok=True)
    state = unilm_state(model)
    if hf_names:
        from diffeval.checkpoints.hf import file_name

        state = {file_name(k): v for k, v in state.items()}
    for name in drop:
        del state[name]
    if pickle:
        torch.save(state, directory / "model.pt")
    else:
        save_file(state, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(unilm_config(model, **config)))
    return directory


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("layer_idx", [0, 1])
def test_reference_layer_equals_the_converted_layer(shape, layer_idx, tmp_path):
    model = _model(shape, subln=True)
    loaded = diffeval.load(str(_write(model, tmp_path / "u")), dtype=torch.float64, backend="reference").model
    state = unilm_state(model)
    x = torch.randn(2, 31, model.cfg.d_model, generator=torch.Generator().manual_seed(layer_idx), dtype=torch.float64)
    want = reference_layer(x, state, f"layers.{layer_idx}.attn", model.cfg, layer_idx)
    cos, sin = loaded.rotary.cos_sin(torch.arange(31), torch.float64)
    with torch.no_grad():
        got = loaded.layers[layer_idx].attn(x, cos, sin, None, ForwardContext(resolve_backend("reference")))
    assert (got - want).abs().max().item() < 1e-10


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("subln", [True, False], ids=["subln-weight", "no-subln-weight"])
def test_reference_layout_checkpoint_loads_to_the_same_logits(shape, subln, tmp_path):
    model = _model(shape, subln)
    directory = _write(model, tmp_path / "u", hf_names=shape == "gqa")
    loaded = diffeval.load(str(directory))
    assert loaded.info.format == "unilm" and loaded.model.cfg.diff_norm_weight == subln
    ids = torch.randint(0, 300, (2, 70), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (loaded.model(ids) - model(ids)).abs().max().item() <= 1e-5


def test_pickled_state_dict_loads_with_allow_pickle(tmp_path, capsys):
    model = _model("gqa", subln=True)
    directory = _write(model, tmp_path / "p", pickle=True, subln_weight=True)
    assert run_cli(["info", "--ckpt", str(directory)]) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    loaded = diffeval.load(str(directory), allow_pickle=True)
    ids = torch.randint(0, 300, (1, 40), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (loaded.model(ids) - model(ids)).abs().max().item() <= 1e-5
    assert run_cli(["info", "--ckpt", str(directory), "--allow-pickle"]) == 0
    assert "unilm" in capsys.readouterr().out


def test_reference_layout_is_detected_from_tensor_names_under_a_native_config(tmp_path, capsys):
    model = _model("mha", subln=False)
    directory = tmp_path / "n"
    diffeval.save(model, directory)
    save_file(unilm_state(model), str(directory / "model.safetensors"))  # native config, unilm tensors
    loaded = diffeval.load(str(directory))
    assert loaded.info.format == "native config, unilm weights"
    ids = torch.randint(0, 300, (1, 40), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert (loaded.model(ids) - model(ids)).abs().max().item() <= 1e-5
    assert run_cli(["info", "--ckpt", str(directory), "--format", "unilm"]) == 0
    assert run_cli(["info", "--ckpt", str(directory), "--format", "hf"]) == 2
    assert "--format hf" in capsys.readouterr().err


def _bad(tmp_path, change):
    model = _model("gqa-2groups", subln=True)
    directory = _write(model, tmp_path / "bad")
    state = unilm_state(model)
    config = unilm_config(model)
    change(state, config)
    save_file(state, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _drop_subln_layer1(state, config):
    del state["layers.1.attn.subln.weight"]


def _drop_subln_configured(state, config):
    _drop_subln_layer1(state, config)
    config["subln_weight"] = True


def _odd_q_heads(state, config):
    q = state["layers.0.attn.q_proj.weight"]
    state["layers.0.attn.q_proj.weight"] = torch.cat((q, q[:8]))  # one more head of width d = 8


def _short_k(state, config):
    state["layers.1.attn.k_proj.weight"] = state["layers.1.attn.k_proj.weight"][:-4]  # not whole heads of width 8


def _short_subln(state, config):
    state["layers.0.attn.subln.weight"] = state["layers.0.attn.subln.weight"][:8]  # d, not 2d


def _subln_when_config_says_none(state, config):
    config["subln_weight"] = False


@pytest.mark.parametrize("change,tensor,words", [
    (_drop_subln_layer1, "layers.1.attn.subln.weight", "missing"),  # inconsistent with layer 0
    (_drop_subln_configured, "layers.1.attn.subln.weight", "missing"),
    (_subln_when_config_says_none, "layers.0.attn.subln.weight", "no weight"),
    (_odd_q_heads, "layers.0.attn.q_proj.weight", "odd number of heads"),
    (_short_k, "layers.1.attn.k_proj.weight", "interleave size"),
    (_short_subln, "layers.0.attn.subln.weight", "interleave size"),
], ids=["subln-inconsistent", "subln-missing", "subln-unexpected", "odd-heads", "k-size", "subln-size"])
def test_bad_reference_checkpoints_exit_2_naming_the_tensor(tmp_path, capsys, change, tensor, words):
    directory = _bad(tmp_path, change)
    assert run_cli(["info", "--ckpt", str(directory)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and repr(tensor) in err and words in err, err


@pytest.mark.parametrize("config,field", [({"num_heads": 3}, "num_kv_heads"), ({"ffn_dim": None}, "ffn_dim"),
                                          ({"heads": 2}, "heads")])
def test_bad_reference_configs_exit_2_naming_the_field(tmp_path, capsys, config, field):
    def change(state, cfg):
        cfg.update(config)
        if cfg.get("ffn_dim", 0) is None:
            del cfg["ffn_dim"]

    directory = _bad(tmp_path, change)
    assert run_cli(["info", "--ckpt", str(directory)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err, err


def test_probe_commands_take_format_unilm(tmp_path, capsys):
    import shutil

    zoo = diffeval.load("zoo:diff-tiny")
    model = zoo.model
    directory = _write(model, tmp_path / "u")
    shutil.copy(zoo.tokenizer.path, directory / "tokenizer.json")
    out = tmp_path / "nll"
    assert run_cli(["nll", "--ckpt", str(directory), "--format", "unilm", "--docs", "2", "--len", "64",
                    "--device", "cpu", "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["models"][0]["family"] == "diff"
    native = tmp_path / "native"
    diffeval.save(model, native)
    assert run_cli(["info", "--ckpt", str(native), "--format", "unilm"]) == 2
    assert "'out_proj'" in capsys.readouterr().err


@pytest.mark.parametrize("n_kv", [4, 2], ids=["mha", "gqa"])
def test_reference_layout_of_a_diffllama_gives_its_transformers_logits(hf_dir, tmp_path, n_kv):
    """A transformers DiffLlamaForCausalLM (HF layout), rewritten in the reference layout by
    the test helper, loads to the logits transformers computes for the original."""
    from hf_models import hf_model

    directory = hf_dir("diffllama", n_kv=n_kv)
    model = diffeval.load(str(directory)).model
    ids = torch.randint(0, 300, (2, 60), generator=torch.Generator().manual_seed(6))
    converted = diffeval.load(str(_write(model, tmp_path / "u"))).model
    with torch.no_grad():
        want = hf_model(directory)(ids).logits
        assert (converted(ids) - want).abs().max().item() <= 1e-5
