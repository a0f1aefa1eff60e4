"""The CUDA attention paths (sdpa's lower-right causal bias for queries after a cached prefix,
the Triton kernel) against the reference path on the same GPU: fresh, chunked after a prefix,
and decode calls, with and without GQA, softmax and DIFF. Skipped without a CUDA device."""

import importlib.util

import pytest
import torch

from helpers import tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

BACKENDS = ["sdpa"] + (["triton"] if importlib.util.find_spec("triton") else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family,n_kv", [("transformer", 2), ("transformer", None), ("diff", 1), ("diff", None),
                                         ("diff2", None), ("diff2", 2)])
def test_cuda_paths_match_reference(family, n_kv, backend):
    model = tiny_model(family, n_kv_heads=n_kv).to("cuda")
    ids = torch.randint(0, 300, (1, 300), generator=torch.Generator().manual_seed(4)).to("cuda")
    with torch.no_grad():
        model.set_backend("reference", "cuda")
        want = model(ids)
        model.set_backend(backend, "cuda")
        fresh = model(ids)
        cache = model.new_cache()
        parts = [model(ids[:, :128], cache), model(ids[:, 128:256], cache), model(ids[:, 256:290], cache)]
        parts += [model(ids[:, t:t + 1], cache) for t in range(290, 300)]
    assert (fresh - want).abs().max().item() <= 1e-4
    assert (torch.cat(parts, dim=1) - want).abs().max().item() <= 1e-4
