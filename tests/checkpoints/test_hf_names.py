"""The one Hugging Face name table (checkpoints/hf.py NAME_MAP) read in both directions: every
tensor of a random tiny Llama, Qwen2 (qkv bias) and DiffLlama checkpoint has a native name
that gives it back, and loads into the native parameter of that name."""

import pytest
import torch
from safetensors import safe_open

import diffeval
from diffeval.checkpoints import hf
from helpers import tiny_model


@pytest.mark.parametrize("kind", ["llama", "qwen2", "diffllama"])
def test_every_tensor_name_round_trips_and_loads_where_its_native_name_says(hf_dir, kind):
    directory = hf_dir(kind, n_kv=2)
    with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    state = diffeval.load(str(directory)).model.state_dict()
    natives = {name: hf.native_name(name) for name in tensors}
    assert None not in natives.values(), [n for n, v in natives.items() if v is None]
    assert set(natives.values()) == set(state)  # every parameter, each from exactly one tensor
    for name, native in natives.items():
        assert hf.file_name(native) == name
        assert torch.equal(state[native], tensors[name]), name  # the tensor itself, not one of its shape
    if kind == "qwen2":
        assert {"layers.0.attn.q_proj.bias", "layers.0.attn.k_proj.bias", "layers.0.attn.v_proj.bias"} <= set(state)
    if kind == "diffllama":
        assert {"layers.0.attn.lambda_q1", "layers.0.attn.lambda_k2"} <= set(state)


def test_the_table_names_what_it_should():
    assert hf.native_name("model.layers.11.input_layernorm.weight") == "layers.11.attn_norm.weight"
    assert hf.native_name("model.layers.0.post_attention_layernorm.weight") == "layers.0.mlp_norm.weight"
    assert hf.native_name("model.layers.3.self_attn.lambda_q1") == "layers.3.attn.lambda_q1"
    assert hf.native_name("model.embed_tokens.weight") == "embed.weight"
    for foreign in ("model.layers.0.self_attn.rotary_emb.inv_freq.x", "model.layers.x.mlp.up_proj.weight",
                    "transformer.h.0.attn.c_attn.weight", "model.layers.0.mlp.up_proj"):
        assert hf.native_name(foreign) is None, foreign
    assert hf.file_name("not.a.native.name") == "not.a.native.name"


@pytest.mark.parametrize("family,options", [("transformer", dict(qkv_bias=True, o_bias=True, mlp_bias=True)),
                                            ("sha", {}), ("diff", dict(diff_norm_weight=True)), ("diff2", {})])
def test_every_native_parameter_has_a_hugging_face_name_that_gives_it_back(family, options):
    for native in tiny_model(family, **options).state_dict():
        name = hf.file_name(native)
        assert name != native or native == "lm_head.weight"
        assert hf.native_name(name) == native
