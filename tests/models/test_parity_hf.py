"""Logits and attention rows against transformers on random tiny checkpoints."""

import pytest
import torch

import diffeval
from diffeval.models import Capture
from hf_models import hf_model

CASES = [
    ("llama", dict(n_kv=4)),  # MHA, untied
    ("llama", dict(n_kv=2, tied=True)),  # GQA, tied
    ("llama", dict(n_kv=1)),  # MQA
    ("qwen2", dict(n_kv=2)),  # qkv bias
    ("mistral", dict(n_kv=2)),
    ("mistral", dict(n_kv=2, sliding_window=24)),  # window shorter than the 80-token input
    ("qwen3", dict(n_kv=2)),  # per-head q/k norms, GQA, untied
    ("qwen3", dict(n_kv=4, tied=True)),
    ("qwen3_5", dict(n_kv=2)),  # gated attention (q_proj split), zero-centred norms
    ("qwen3_5", dict(n_kv=1, tied=True, attention_bias=True)),
    ("diffllama", dict(n_kv=4)),  # MHA
    ("diffllama", dict(n_kv=2)),  # GQA
    ("diffllama", dict(n_kv=2, tied=True)),
]


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 300, (2, 80), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind,options", CASES, ids=[f"{k}-{o}" for k, o in CASES])
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_logits_match_transformers(hf_dir, ids, kind, options, backend):
    directory = hf_dir(kind, **options)
    with torch.no_grad():
        expected = hf_model(directory)(ids).logits
        ours = diffeval.load(str(directory), backend=backend).model(ids)
    assert ours.shape == expected.shape
    assert (ours - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("kind,options", [c for c in CASES if c[0] in ("llama", "diffllama")])
def test_captured_rows_match_eager_attentions(hf_dir, ids, kind, options):
    directory = hf_dir(kind, **options)
    with torch.no_grad():
        attn = hf_model(directory)(ids, output_attentions=True).attentions  # per layer (B, nH, T, T)
    loaded = diffeval.load(str(directory))
    positions = [0, 5, 41, 79]
    cap = Capture(positions)
    with torch.no_grad():
        loaded.model(ids, capture=cap, logits="none")
    H = loaded.model.cfg.n_heads
    for layer, full in enumerate(attn):
        want = full[:, :, positions]  # (B, nH, R, T)
        rows = cap.rows[layer]
        if kind == "diffllama":
            torch.testing.assert_close(rows["map1"], want[:, :H], atol=1e-5, rtol=0)
            torch.testing.assert_close(rows["map2"], want[:, H:], atol=1e-5, rtol=0)
            lam = rows["lambda"]
            torch.testing.assert_close(rows["diff"], want[:, :H] - lam * want[:, H:], atol=1e-5, rtol=0)
            assert rows["diff"].sum(-1).sub(1 - lam).abs().max() < 1e-5  # rows sum to 1 - lambda
        else:
            torch.testing.assert_close(rows["attn"], want, atol=1e-5, rtol=0)


def test_sharded_checkpoint_loads(hf_dir, ids):
    directory = hf_dir("llama", n_kv=2, sharded=True)
    assert (directory / "model.safetensors.index.json").exists()
    with torch.no_grad():
        expected = hf_model(directory)(ids).logits
        loaded = diffeval.load(str(directory))
        ours = loaded.model(ids)
    assert len(loaded.info.files) > 1
    assert (ours - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "linear", "factor": 4.0, "rope_theta": 5000.0},
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 64, "rope_theta": 500000.0},
    ],
    ids=["linear", "llama3"],
)
def test_rope_scaling_matches_transformers(hf_dir, rope):
    directory = hf_dir("llama", n_kv=2, rope=rope, max_pos=4096)
    ids = torch.randint(0, 300, (1, 300), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = hf_model(directory)(ids).logits
        ours = diffeval.load(str(directory)).model(ids)
    assert (ours - expected).abs().max().item() <= 1e-4


def test_rope_scaling_changes_the_model(hf_dir):
    """Guard against a scaling silently ignored: the llama3-scaled model differs from default."""
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64, "rope_theta": 500000.0}
    scaled = diffeval.load(str(hf_dir("llama", n_kv=2, rope=rope, max_pos=4096))).model
    plain = diffeval.load(str(hf_dir("llama", n_kv=2, rope={"rope_type": "default", "rope_theta": 500000.0}, max_pos=4096))).model
    ids = torch.randint(0, 300, (1, 200), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (scaled(ids) - plain(ids)).abs().max() > 1e-3
