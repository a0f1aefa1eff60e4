"""Softmax attention with learnable sinks, the `sinks` family (gpt-oss; "off-by-one" softmax):
every head h has one logit s_h that joins each row's denominator and attends to nothing,
    A_h[t, j] = exp(l_tj) / (exp(s_h) + sum_j' exp(l_tj'))
so a head can put mass "nowhere" instead of on the first token. Rows sum to less than 1; a
captured row holds the real keys' probabilities. gpt-oss alternates sliding-window and full
layers (`sliding_window`, `layer_types`). The backends apply the sink after the fused softmax
(kernels/sdpa.py): the kernels that serve the other softmax families serve this one."""

from __future__ import annotations

import torch
from torch import nn

from diffeval.models.attention import Attention
from diffeval.models.config import ModelConfig


class SinkAttention(Attention):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__(cfg, layer_idx)
        self.sinks = nn.Parameter(torch.zeros(cfg.n_heads))

    def sink_logits(self) -> torch.Tensor:
        return self.sinks
