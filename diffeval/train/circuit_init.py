"""An initialisation that plants an induction circuit, so that a tiny model trained for
minutes on a CPU can learn retrieval (measured: from the usual random init, copying and the
needle task stayed at chance for 1,000+ steps; see the zoo model cards).

The residual stream is split in two halves: E = [0, d/2) carries the token embedding (its
last coordinate is a constant 1 in every embedding, a "bias" direction), P = [d/2, d) is
reserved for a copy of the previous token's embedding.

- Previous-token heads read only the constant coordinate in Q and K, so their scores depend
  on the relative position alone; the query vector is the key vector rotated back by one
  RoPE step, so (fast rotary pairs only) score(i, j) = a * sum_m cos((i - j - 1) theta_m),
  largest at j = i - 1. V/O copy E of the attended token into P.
- Induction heads compare E of the query position with P of each key position through a
  random orthonormal projection placed on the slow rotary pairs (rotation < 0.5 rad over the
  trained length, so the match is nearly position-free), and copy E of the matched token,
  the one that followed the earlier occurrence, back into E, where the tied unembedding
  reads it as that token's logit.

Layer roles per family: transformer, first layer heads 0-1 previous-token, second layer all
heads induction; sha (one head per layer), the first two layers previous-token, the top
layer(s) induction; diff, first layer head 0 previous-token (map 1; map 2 zero, i.e. uniform), second
layer every head induction (map 1; map 2 uniform); gated and sinks, the transformer's (gated
with its gates at exactly 1/2 and the output projection doubled to match). Everything else
keeps the seeded normal init, and training is free to change all of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from diffeval.errors import ConfigError
from diffeval.models.layers import rope_inv_freq

PREV_AMP, MATCH_AMP = 1.5, 6.0  # score scales, chosen by measuring copy accuracy untrained


def _orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    """(rows, cols): orthonormal rows, the rows beyond `cols` zero."""
    k = min(rows, cols)
    a = torch.randn(cols, k, generator=gen)
    q, _ = torch.linalg.qr(a)  # (cols, k)
    out = torch.zeros(rows, cols)
    out[:k] = q.T
    return out


def _pairs(model, seq_len: int) -> tuple[list[int], list[int]]:
    """(fast pairs for the position pattern, slow pairs for content matching)."""
    inv = rope_inv_freq(model.cfg.rope, model.cfg.d_head).double()  # (d_head / 2,)
    fast = [m for m in range(len(inv)) if inv[m] >= 0.05][:4]
    slow = [m for m in range(len(inv)) if inv[m] * seq_len <= 0.5]
    if len(fast) < 2 or len(slow) < 4:
        raise ConfigError(f"circuit init needs >= 2 fast and >= 4 slow rotary pairs; got {len(fast)} and "
                          f"{len(slow)} (d_head {model.cfg.d_head}, rope theta {model.cfg.rope.theta}, "
                          f"length {seq_len}): raise rope theta or d_head")
    return fast, slow


def _prev_qk(wq: torch.Tensor, wk: torch.Tensor, const: int, fast: list[int], inv, amp: float) -> None:
    """wq, wk (d_head, d_model) rows of one head: a previous-token pattern."""
    half = wq.shape[0] // 2
    wq.zero_()
    wk.zero_()
    for m in fast:
        th = float(inv[m])
        wq[m, const], wq[m + half, const] = amp * math.cos(th), -amp * math.sin(th)
        wk[m, const] = amp


def _match_qk(wq: torch.Tensor, wk: torch.Tensor, e_dims: int, p_off: int, slow: list[int],
              gen: torch.Generator, amp: float) -> None:
    """wq, wk (d_head, d_model): query reads E, key reads P, through one random projection."""
    half = wq.shape[0] // 2
    slots = slow + [m + half for m in slow]
    r = _orthonormal(len(slots), e_dims - 1, gen) * amp  # (S, E - 1): the constant coordinate left out
    wq.zero_()
    wk.zero_()
    wq[slots, : e_dims - 1] = r
    wk[slots, p_off : p_off + e_dims - 1] = r


@dataclass
class _Circuit:
    """What the planted heads share: the widths, the embedding's constant column, the RoPE
    pairs that carry position (fast) and content match (slow), and the generator."""

    dh: int
    e_dims: int
    const: int
    fast: list
    slow: list
    inv: torch.Tensor
    gen: torch.Generator

    def prev(self, attn, qh: int, kh: int, vh: list[int], ocol: int, src: int, o_scale: float) -> None:
        """A previous-token head: query head qh, key head kh, value heads vh copied to `src`."""
        dh, e_dims = self.dh, self.e_dims
        wq, wk = attn.q_proj.weight, attn.k_proj.weight
        _prev_qk(wq[qh * dh:(qh + 1) * dh], wk[kh * dh:(kh + 1) * dh], self.const, self.fast, self.inv, PREV_AMP)
        width = dh * len(vh)
        attn.o_proj.weight[:, ocol:ocol + width] = 0.0
        for n, h in enumerate(vh):
            wv = attn.v_proj.weight[h * dh:(h + 1) * dh]
            wv.zero_()
            for r in range(dh):
                s = src + n * dh + r
                if s < e_dims:
                    wv[r, s] = 1.0
                    attn.o_proj.weight[e_dims + s, ocol + n * dh + r] = o_scale

    def induct(self, attn, qh: int, kh: int, vh: list[int], ocol: int, o_scale: float) -> None:
        """An induction head: matches the copied previous token, writes the token after it."""
        dh, e_dims = self.dh, self.e_dims
        wq, wk = attn.q_proj.weight, attn.k_proj.weight
        _match_qk(wq[qh * dh:(qh + 1) * dh], wk[kh * dh:(kh + 1) * dh], e_dims, e_dims, self.slow, self.gen,
                  MATCH_AMP)
        width = dh * len(vh)
        u = _orthonormal(width, e_dims - 1, self.gen)  # (width, E - 1)
        for n, h in enumerate(vh):
            wv = attn.v_proj.weight[h * dh:(h + 1) * dh]
            wv.zero_()
            wv[:, : e_dims - 1] = u[n * dh:(n + 1) * dh]
        attn.o_proj.weight[:, ocol:ocol + width] = 0.0
        attn.o_proj.weight[: e_dims - 1, ocol:ocol + width] = o_scale * u.T


@torch.no_grad()
def plant_induction(model, seq_len: int, seed: int, sha_induction_layers: int = 1) -> None:
    """Overwrite parts of a freshly initialised `model` (see the module docstring);
    `sha_induction_layers`: how many top layers of an SHA stack get an induction head."""
    cfg = model.cfg
    if cfg.family == "diff2":
        raise ConfigError("circuit init (init: induction) does not support family 'diff2'; use init: normal")
    d, dh = cfg.d_model, cfg.d_head
    if cfg.rope.fraction != 1:
        raise ConfigError(f"circuit init needs RoPE over the whole head; rope.fraction is {cfg.rope.fraction}")
    if d % 2 or cfg.n_kv_heads != cfg.n_q_heads or not cfg.tie_embeddings:
        raise ConfigError("circuit init needs an even d_model, no GQA and tied embeddings")
    e_dims, const = d // 2, d // 2 - 1
    if dh > e_dims:
        raise ConfigError(f"circuit init needs d_head ({dh}) <= d_model / 2 ({e_dims})")
    if cfg.family not in _PLANT:
        raise ConfigError(f"circuit init: unknown family {cfg.family!r}")
    gen = torch.Generator().manual_seed(seed + 7919)
    inv = rope_inv_freq(cfg.rope, dh).double()
    fast, slow = _pairs(model, seq_len)
    emb = model.embed.weight  # (V, d)
    emb.zero_()
    emb[:, : e_dims - 1] = torch.randn(emb.shape[0], e_dims - 1, generator=gen) / math.sqrt(e_dims - 1)
    emb[:, const] = 1.0
    circuit = _Circuit(dh, e_dims, const, fast, slow, inv, gen)
    _PLANT[cfg.family](circuit, cfg, [blk.attn for blk in model.layers], sha_induction_layers)


def _plant_transformer(c: _Circuit, cfg, layers: list, sha_induction_layers: int) -> None:
    if cfg.n_layers < 2 or cfg.n_heads < 2:
        raise ConfigError("circuit init for a transformer needs >= 2 layers and >= 2 heads")
    for h in range(2):
        c.prev(layers[0], h, h, [h], h * c.dh, h * c.dh, 1.0 / 8)
    for h in range(cfg.n_heads):
        c.induct(layers[1], h, h, [h], h * c.dh, 0.5 / cfg.n_heads)


def _plant_sha(c: _Circuit, cfg, layers: list, sha_induction_layers: int) -> None:
    if cfg.n_layers < 3:
        raise ConfigError("circuit init for sha needs >= 3 layers")
    n_prev = max(1, math.ceil(c.e_dims / c.dh) if cfg.n_layers > 4 else 1)
    n_prev = min(n_prev, 2)
    for i in range(n_prev):
        c.prev(layers[i], 0, 0, [0], 0, i * c.dh, 1.0 / 8)
    # Induction heads in sequence read each other's output as part of their query (E then
    # holds the current and the copied token): measured untrained copy accuracy at 64 / 256
    # / 1000 tokens, 6 layers 0.45 / 0.37 / 0.17, the last one only 0.76 / 0.60 / 0.47.
    # So only the top `sha_induction_layers` get one; the layers between keep the normal init.
    n_ind = min(sha_induction_layers, cfg.n_layers - n_prev)
    for i in range(cfg.n_layers - n_ind, cfg.n_layers):
        c.induct(layers[i], 0, 0, [0], 0, 0.5 / n_ind)


def _plant_diff(c: _Circuit, cfg, layers: list, sha_induction_layers: int) -> None:
    if cfg.n_layers < 2:
        raise ConfigError("circuit init for diff needs >= 2 layers")
    H, dh = cfg.n_heads, c.dh
    a0 = layers[0]
    c.prev(a0, 0, 0, [0, H], 0, 0, 1.0 / 8)
    a0.q_proj.weight[H * dh:(H + 1) * dh] = 0.0  # map 2 uniform
    a0.k_proj.weight[H * dh:(H + 1) * dh] = 0.0
    a1 = layers[1]
    for h in range(H):
        c.induct(a1, h, h, [h, h + H], 2 * h * dh, 0.5 / H)
        a1.q_proj.weight[(h + H) * dh:(h + H + 1) * dh] = 0.0
        a1.k_proj.weight[(h + H) * dh:(h + H + 1) * dh] = 0.0


def _plant_gated(c: _Circuit, cfg, layers: list, sha_induction_layers: int) -> None:
    """The transformer's circuit, with every gate at exactly sigmoid(0) = 1/2 (g_proj zero) and
    the output projections doubled: at step 0 the model computes what the planted transformer
    does, and training moves the gates from there."""
    _plant_transformer(c, cfg, layers, sha_induction_layers)
    for attn in layers:
        attn.g_proj.weight.zero_()
        if attn.g_proj.bias is not None:
            attn.g_proj.bias.zero_()
        attn.o_proj.weight.mul_(2.0)


_PLANT = {"transformer": _plant_transformer, "sha": _plant_sha, "diff": _plant_diff, "gated": _plant_gated,
          "sinks": _plant_transformer}  # sinks start near 0 (their normal init): the planted logits dominate
