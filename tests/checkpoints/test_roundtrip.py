"""Native save/load, tokenizers, and the info fields."""

import json

import torch

import diffeval
from diffeval.tokenizers import ByteTokenizer, HFTokenizer
from helpers import tiny_model


def test_native_roundtrip_is_exact(tmp_path):
    model = tiny_model("diff", n_kv_heads=2, tie_embeddings=True)
    diffeval.save(model, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["family"] == "diff" and cfg["tokenizer"] == "byte"
    loaded = diffeval.load(str(tmp_path / "m"))
    ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.model(ids), model(ids))
    assert isinstance(loaded.tokenizer, ByteTokenizer)
    assert loaded.info.n_params == model.cfg.n_params() == sum(p.numel() for p in model.parameters())
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "m").iterdir())


def test_hf_tokenizer_roundtrip_and_dtype(hf_dir):
    loaded = diffeval.load(str(hf_dir("qwen2", n_kv=2)), dtype=torch.float64, backend="reference")
    tok = loaded.tokenizer
    assert isinstance(tok, HFTokenizer)
    text = "The magic number for Paris is 1234567."
    ids = tok.encode(text)
    assert tok.decode(ids) == text and len(ids) < len(text)
    assert loaded.info.dtype == "float64" and loaded.info.backend == "reference"
    assert next(loaded.model.parameters()).dtype == torch.float64


def test_byte_tokenizer_roundtrip():
    tok = ByteTokenizer()
    text = "naïve — 東京 123"
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode([tok.bos_id, *tok.encode("a"), tok.eos_id]) == "a"


def test_param_count_from_config_matches_modules():
    for family, extra in [("transformer", dict(qkv_bias=True, mlp_bias=True)), ("sha", {}), ("diff", dict(diff_norm_weight=True, o_bias=True))]:
        model = tiny_model(family, **extra)
        assert model.cfg.n_params() == sum(p.numel() for p in model.parameters())


def test_weight_hash_cache_is_used_only_while_the_file_is_unchanged(tmp_path):
    """The weights' sha256 is read once, then taken from the cache (and said so); a rewrite
    with the same size and mtime, or a damaged cache entry, makes it read the file again."""
    import hashlib
    import os

    from diffeval.checkpoints.files import cache_dir

    model = tiny_model("transformer")
    diffeval.save(model, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    want = hashlib.sha256(weights.read_bytes()).hexdigest()
    first, second = diffeval.load(str(tmp_path / "m")).info, diffeval.load(str(tmp_path / "m")).info
    assert (first.sha256, first.sha256_from) == (want, "read")
    assert (second.sha256, second.sha256_from) == (want, "cache")
    st = weights.stat()
    with torch.no_grad():
        model.layers[0].attn.q_proj.weight[0, 0] += 1.0
    diffeval.save(model, tmp_path / "other")
    weights.write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())  # same size
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old mtime
    changed = diffeval.load(str(tmp_path / "m")).info
    assert changed.sha256_from == "read" and changed.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest() != want
    for entry in (cache_dir() / "sha256").glob("*.json"):
        entry.write_text("{not json")
    again = diffeval.load(str(tmp_path / "m")).info
    assert again.sha256_from == "read" and again.sha256 == changed.sha256
