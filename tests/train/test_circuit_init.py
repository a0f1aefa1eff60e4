"""The planted induction circuit copies from context before any training, for every family."""

import dataclasses

import pytest
import torch

from diffeval.errors import ConfigError
from diffeval.models.config import ModelConfig, RopeConfig
from diffeval.models.decoder import Decoder
from diffeval.train.circuit_init import plant_induction

SHAPES = {"transformer": dict(n_layers=2, n_heads=4), "sha": dict(n_layers=8, n_heads=1),
          "diff": dict(n_layers=2, n_heads=2), "gated": dict(n_layers=2, n_heads=4),
          "sinks": dict(n_layers=2, n_heads=4, sliding_window=128, layer_types=["sliding_attention", "full_attention"])}


def _model(family, **over):
    cfg = ModelConfig(family=family, vocab_size=512, d_model=128, d_head=32, d_ff=64, tie_embeddings=True,
                      rope=RopeConfig(theta=1e6), **{**SHAPES[family], **over})
    m = Decoder(cfg)
    m.init_weights(0)
    return m


def _copy_acc(model, n=48, seed=1):
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(8, 512, (2, n), generator=g)
    ids = torch.cat([seq, seq], 1)  # (2, 2n)
    with torch.no_grad():
        pred = model(ids)[:, n:-1].argmax(-1)
    return float((pred == ids[:, n + 1:]).float().mean())


@pytest.mark.parametrize("family", sorted(SHAPES))
def test_planted_model_copies_before_training(family):
    plain = _model(family)
    planted = _model(family)
    plant_induction(planted, seq_len=1024, seed=0)
    assert _copy_acc(plain) < 0.05
    assert _copy_acc(planted) > 0.3


def test_planted_gated_model_is_the_planted_transformer():
    """Gates at exactly 1/2 and doubled output projections: the same function at step 0."""
    gated, plain = _model("gated"), _model("transformer")
    gated.load_state_dict(plain.state_dict(), strict=False)  # the same weights outside the gates
    plant_induction(gated, 1024, 0)
    plant_induction(plain, 1024, 0)
    ids = torch.randint(8, 512, (2, 96), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (gated(ids) - plain(ids)).abs().max() < 1e-4


def test_plant_is_deterministic_and_refuses_unsuitable_shapes():
    a, b = _model("transformer"), _model("transformer")
    plant_induction(a, 1024, 3)
    plant_induction(b, 1024, 3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    low_theta = Decoder(dataclasses.replace(a.cfg, rope=RopeConfig(theta=100.0)))
    with pytest.raises(ConfigError, match="slow rotary pairs"):
        plant_induction(low_theta, 1024, 0)
