"""torch scaled_dot_product_attention backend.

Causal masking for queries that are the last Tq of Tk keys: one `is_causal` call when Tq == Tk,
no mask for single-token decode, and query blocks with an explicit bottom-right mask otherwise
(block size bounded so the mask stays small).

DIFF has value width 2d != d; a plain call with that shape falls back to the O(n^2) math
kernel on the CPU. Both maps therefore go through one call as 2H heads with q/k zero-padded
to width 2d (the padding adds nothing to q.k), which keeps the fused kernel and O(n) memory."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffeval.kernels.common import DiffNorm, diff_values, expand_kv

MASK_ELEMENTS = 1 << 24  # bound on the (block, Tk) mask of a partial-causal call


class SdpaBackend:
    name = "sdpa"

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, logit_fn=None) -> torch.Tensor:
        """q (B, H, Tq, D); k, v (B, Hkv, Tk, .) -> (B, H, Tq, Dv)."""
        assert logit_fn is None, "logit transforms need the reference backend"
        H, Tq, Tk = q.shape[1], q.shape[2], k.shape[2]
        gqa = k.shape[1] != H
        if Tq == Tk:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
        if Tq == 1:
            return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
        outs = []
        block = max(1, MASK_ELEMENTS // Tk)
        keys = torch.arange(Tk, device=q.device)
        for s in range(0, Tq, block):
            e = min(Tq, s + block)
            q_pos = torch.arange(Tk - Tq + s, Tk - Tq + e, device=q.device)
            mask = keys[None, :] <= q_pos[:, None]  # (block, Tk)
            outs.append(
                F.scaled_dot_product_attention(
                    q[:, :, s:e], k, v, attn_mask=mask, scale=scale, enable_gqa=gqa
                )
            )
        return torch.cat(outs, dim=2)

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
