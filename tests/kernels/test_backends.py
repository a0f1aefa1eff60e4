"""Every backend agrees with the reference path."""

import pytest
import torch

from diffeval.kernels import BACKENDS, resolve_backend
from diffeval.errors import ConfigError

FAST = [name for name in BACKENDS if name not in ("reference", "triton")]  # triton: test_triton_diff.py


def _qkv(B, H, Hkv, T, d, seed, q_len=None):
    g = torch.Generator().manual_seed(seed)
    q_len = T if q_len is None else q_len
    q = torch.randn(B, H, q_len, d, generator=g) * 2
    k = torch.randn(B, Hkv, T, d, generator=g) * 2
    v = torch.randn(B, Hkv, T, d, generator=g)
    return q, k, v


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("T", [1, 7, 64, 300])
@pytest.mark.parametrize("n_kv", [4, 2])
def test_softmax_attention_matches_reference(backend, T, n_kv):
    q, k, v = _qkv(2, 4, n_kv, T, 16, seed=T)
    ref = resolve_backend("reference").attend(q, k, v, scale=0.25)
    out = resolve_backend(backend).attend(q, k, v, scale=0.25)
    assert (out - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("T", [1, 7, 64, 300])
@pytest.mark.parametrize("n_kv", [4, 2])
def test_diff_attention_matches_reference(backend, T, n_kv):
    q, k, v = _qkv(2, 4, n_kv, T, 16, seed=100 + T)  # 4 query heads = 2 differential heads
    lam = torch.tensor(0.37)
    ref = resolve_backend("reference").diff_attend(q, k, v, lam, scale=0.25)
    out = resolve_backend(backend).diff_attend(q, k, v, lam, scale=0.25)
    assert out.shape == (2, 2, q.shape[2], 32)
    assert (out - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("q_len", [1, 5, 40])
def test_queries_after_a_prefix_match_reference(backend, q_len):
    """Chunked prefill / decode: the queries are the last q_len of the keys."""
    q, k, v = _qkv(1, 4, 2, 120, 16, seed=q_len, q_len=q_len)
    ref = resolve_backend("reference").attend(q, k, v, scale=0.25)
    out = resolve_backend(backend).attend(q, k, v, scale=0.25)
    assert (out - ref).abs().max().item() <= 1e-5
    lam = torch.tensor(0.5)
    ref = resolve_backend("reference").diff_attend(q, k, v, lam, scale=0.25)
    out = resolve_backend(backend).diff_attend(q, k, v, lam, scale=0.25)
    assert (out - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("n_kv", [4, 2])
@pytest.mark.parametrize("q_len", [3, 64])
def test_prefix_paths_match_reference(n_kv, q_len, monkeypatch):
    """Every sdpa path for queries after a cached prefix: one kept mask (asked for again with
    another shape and dtype in between), query blocks with their own masks, the CPU split into
    cached and new keys merged by log-sum-exp, and the CUDA lower-right bias (run here with its
    materialised fallback)."""
    import diffeval.kernels.sdpa as sdpa

    q, k, v = _qkv(1, 4, n_kv, 150, 16, seed=q_len + n_kv, q_len=q_len)
    ref = resolve_backend("reference").attend(q, k, v, scale=0.25)
    backend = sdpa.SdpaBackend()
    first = backend.attend(q, k, v, scale=0.25)
    other = backend.attend(q[:, :, :2].double(), k[:, :, :100].double(), v[:, :, :100].double(), scale=0.25)
    assert other.dtype == torch.float64
    again = backend.attend(q, k, v, scale=0.25)
    assert (first - ref).abs().max().item() <= 1e-5 and torch.equal(first, again)
    assert (sdpa.lower_right_attend(q, k, v, 0.25) - ref).abs().max().item() <= 1e-5
    assert (sdpa.split_attend(q, k, v, 0.25) - ref).abs().max().item() <= 1e-5
    monkeypatch.setattr(sdpa, "SPLIT_MIN_PREFIX", 1)  # through attend, softmax and DIFF
    assert (sdpa.SdpaBackend().attend(q, k, v, scale=0.25) - ref).abs().max().item() <= 1e-5
    lam = torch.tensor(0.4)
    d_ref = resolve_backend("reference").diff_attend(q, k, v, lam, scale=0.25)
    assert (sdpa.SdpaBackend().diff_attend(q, k, v, lam, scale=0.25) - d_ref).abs().max().item() <= 1e-5
    monkeypatch.setattr(sdpa, "SPLIT_MIN_PREFIX", 10**9)
    monkeypatch.setattr(sdpa, "MASK_ELEMENTS", 150 * 2)  # query blocks of 2 rows
    blocked = sdpa.SdpaBackend().attend(q, k, v, scale=0.25)
    assert (blocked - ref).abs().max().item() <= 1e-5
    assert (sdpa.SdpaBackend().diff_attend(q, k, v, lam, scale=0.25) - d_ref).abs().max().item() <= 1e-5


def test_reference_matches_dense_softmax_in_float64():
    q, k, v = (t.double() for t in _qkv(1, 2, 2, 50, 8, seed=7))
    mask = torch.ones(50, 50, dtype=torch.bool).tril()
    dense = torch.softmax((q @ k.transpose(-1, -2) * 0.3).masked_fill(~mask, float("-inf")), -1) @ v
    out = resolve_backend("reference").attend(q, k, v, scale=0.3)
    assert out.dtype == torch.float64
    assert (out - dense).abs().max().item() < 1e-12


def test_reference_query_blocks_do_not_change_results(monkeypatch):
    import diffeval.kernels.reference as reference

    q, k, v = _qkv(1, 2, 2, 90, 8, seed=9)
    whole = reference.ReferenceBackend().attend(q, k, v, scale=0.3)
    monkeypatch.setattr(reference, "BLOCK_ELEMENTS", 2 * 90 * 7)  # blocks of 7 queries
    blocked = reference.ReferenceBackend().attend(q, k, v, scale=0.3)
    assert torch.equal(whole, blocked)


def test_unknown_backend_is_refused_with_choices():
    with pytest.raises(ConfigError, match="did you mean 'sdpa'"):
        resolve_backend("sdp")


def test_auto_is_sdpa_on_cpu():
    assert resolve_backend("auto", "cpu").name == "sdpa"
