"""torch scaled_dot_product_attention backend.

Causal masking for queries that are the last Tq of Tk keys: one `is_causal` call when Tq == Tk,
no mask for single-token decode. Otherwise (a prompt continuing a cached prefix):
- on CUDA, torch's lower-right causal bias, which runs the fused memory-efficient kernel;
- on the CPU after a prefix of SPLIT_MIN_PREFIX keys or more, two calls of the fused CPU kernel
  merged by log-sum-exp: the cached keys with no mask, the new keys causal (see split_attend);
- else an additive bottom-right mask in query blocks (bounded so the mask stays small). Turning
  a boolean mask into an additive one in every layer cost 13% of a 2K-after-2K prefill (30
  layers), so the mask of the last shape asked for is kept: built once per forward pass.

DIFF has value width 2d != d; a plain call with that shape falls back to the O(n^2) math
kernel on the CPU. Both maps therefore go through one call as 2H heads with q/k zero-padded
to width 2d (the padding adds nothing to q.k), which keeps the fused kernel and O(n) memory."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from diffeval.kernels.common import DiffNorm, diff_values, expand_kv

MASK_ELEMENTS = 1 << 24  # bound on the (block, Tk) mask of a partial-causal call
SPLIT_MIN_PREFIX = 1024  # cached keys from which split_attend beats a masked call on the CPU
SPLIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _causal_mask(start: int, stop: int, Tq: int, Tk: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Additive bottom-right causal mask (stop - start, Tk) for queries start..stop of the last Tq
    of Tk positions: 0 where the key is visible, -inf where it is in the future."""
    keys = torch.arange(Tk, device=device)
    q_pos = torch.arange(Tk - Tq + start, Tk - Tq + stop, device=device)
    hidden = keys[None, :] > q_pos[:, None]  # (stop - start, Tk)
    return torch.zeros(hidden.shape, dtype=dtype, device=device).masked_fill_(hidden, -math.inf)


def _flash_cpu():
    """torch's fused CPU attention that also returns the log-sum-exp (None if this torch lacks it)."""
    return getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def split_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Queries that are the last Tq of Tk positions, as two fused CPU calls merged by log-sum-exp:
    the P = Tk - Tq cached keys with no mask, then the Tq new keys causal. Under GQA the cached
    keys are not copied: the r query heads of each key-value head are stacked along the query
    axis, which a call without a mask allows. q (B, H, Tq, D); k, v (B, Hkv, Tk, .) -> (B, H, Tq, Dv)."""
    flash = _flash_cpu()
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    P, r = Tk - Tq, H // Hkv
    o1, l1 = flash(q.reshape(B, Hkv, r * Tq, D), k[:, :, :P], v[:, :, :P], scale=scale)  # (B, Hkv, r*Tq, Dv)
    o1, l1 = o1.reshape(B, H, Tq, -1), l1.reshape(B, H, Tq)
    o2, l2 = flash(q, expand_kv(k[:, :, P:], H), expand_kv(v[:, :, P:], H), is_causal=True, scale=scale)
    lse = torch.logaddexp(l1, l2)  # (B, H, Tq) float32
    out = o1.float() * (l1 - lse).exp()[..., None] + o2.float() * (l2 - lse).exp()[..., None]
    return out.to(q.dtype)


def lower_right_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Queries that are the last Tq of Tk positions through torch's lower-right causal bias (the
    fused memory-efficient kernel on CUDA; a materialised mask elsewhere)."""
    from torch.nn.attention.bias import causal_lower_right

    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(q.shape[2], k.shape[2]),
                                          scale=scale, enable_gqa=k.shape[1] != q.shape[1])


class SdpaBackend:
    name = "sdpa"

    def __init__(self) -> None:
        self._last_mask: tuple[tuple, torch.Tensor | None] = ((), None)  # ((Tq, Tk, device, dtype), mask)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, logit_fn=None) -> torch.Tensor:
        """q (B, H, Tq, D); k, v (B, Hkv, Tk, .) -> (B, H, Tq, Dv)."""
        assert logit_fn is None, "logit transforms need the reference backend"
        H, Tq, Tk = q.shape[1], q.shape[2], k.shape[2]
        gqa = k.shape[1] != H
        if Tq == Tk:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
        if Tq == 1:
            return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
        if q.device.type == "cuda":
            return lower_right_attend(q, k, v, scale)
        if (q.device.type == "cpu" and Tk - Tq >= SPLIT_MIN_PREFIX and q.dtype in SPLIT_DTYPES
                and H % k.shape[1] == 0 and _flash_cpu() is not None):
            return split_attend(q, k, v, scale)
        block = max(1, MASK_ELEMENTS // Tk)
        if block >= Tq:  # one mask for the whole call: built once per forward pass
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self._mask(Tq, Tk, q.device, q.dtype),
                                                  scale=scale, enable_gqa=gqa)
        return torch.cat([F.scaled_dot_product_attention(q[:, :, s:s + block], k, v, scale=scale, enable_gqa=gqa,
                                                         attn_mask=_causal_mask(s, min(Tq, s + block), Tq, Tk,
                                                                                q.device, q.dtype))
                          for s in range(0, Tq, block)], dim=2)

    def _mask(self, Tq: int, Tk: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The (Tq, Tk) mask of the last shape asked for is kept: every layer asks for the same."""
        key = (Tq, Tk, device, dtype)
        if self._last_mask[0] != key:
            self._last_mask = (key, _causal_mask(0, Tq, Tq, Tk, device, dtype))
        return self._last_mask[1]

    def diff_attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor, *, scale: float, logit_fn=None,
        norm: DiffNorm | None = None,
    ) -> torch.Tensor:
        """q (B, 2H, Tq, d); k, v (B, Hkv, Tk, d) -> (B, H, Tq, 2d), then `norm` when given."""
        assert logit_fn is None, "logit transforms need the reference backend"
        H2, d = q.shape[1], q.shape[-1]
        H = H2 // 2
        kk = F.pad(expand_kv(k, H2), (0, d))  # (B, 2H, Tk, 2d)
        vv = diff_values(v, H)  # (B, H, Tk, 2d)
        vv = torch.cat((vv, vv), dim=1)  # (B, 2H, Tk, 2d): both maps read the same value
        out = self.attend(F.pad(q, (0, d)), kk, vv, scale=scale)  # (B, 2H, Tq, 2d)
        out = out[:, :H] - lam.to(out.dtype) * out[:, H:]
        return norm.apply(out) if norm is not None else out
