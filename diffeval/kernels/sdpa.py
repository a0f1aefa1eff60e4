"""torch scaled_dot_product_attention backend.

Causal masking for queries that are the last Tq of Tk keys: one `is_causal` call when Tq == Tk,
no mask for single-token decode. Otherwise (a prompt continuing a cached prefix):
- on CUDA, torch's lower-right causal bias, which runs the fused memory-efficient kernel;
- on the CPU after a prefix of SPLIT_MIN_PREFIX keys or more, two calls of the fused CPU kernel
  merged by log-sum-exp: the cached keys with no mask, the new keys causal (see split_attend);
- else an additive bottom-right mask in query blocks (bounded so the mask stays small). Turning
  a boolean mask into an additive one in every layer cost 13% of a 2K-after-2K prefill (30
  layers), so the mask of the last shape asked for is kept: built once per forward pass.

Attention sinks (a logit per head in every row's denominator) scale an ordinary softmax's
output by sigmoid(lse - sink): on the CPU the fused kernel returns the log-sum-exp; elsewhere
the sink joins as one more key (a key with its own feature, value 0) in a standard call. A
sliding window runs in query blocks over the keys they can see (a band mask per block), so a
window of W keys costs O(T x W), not O(T^2).

DIFF has value width 2d != d; a plain call with that shape falls back to the O(n^2) math
kernel on the CPU. Both maps therefore go through one call as 2H heads with q/k zero-padded
to width 2d (the padding adds nothing to q.k), which keeps the fused kernel and O(n) memory."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from diffeval.kernels.common import DiffNorm, causal_valid, diff_values, expand_kv, sink_factor

MASK_ELEMENTS = 1 << 24  # bound on the (block, Tk) mask of a partial-causal call
SPLIT_MIN_PREFIX = 1024  # cached keys from which split_attend beats a masked call on the CPU
SPLIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
WINDOW_BLOCK = 256  # queries per call of a sliding-window layer (at least the window itself)


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
    return split_attend_lse(q, k, v, scale)[0]


def split_attend_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries that are the last Tq of Tk positions, as two fused CPU calls merged by log-sum-exp:
    the P = Tk - Tq cached keys with no mask, then the Tq new keys causal. Under GQA the cached
    keys are not copied: the r query heads of each key-value head are stacked along the query
    axis, which a call without a mask allows. q (B, H, Tq, D); k, v (B, Hkv, Tk, .) -> output
    (B, H, Tq, Dv) and its log-sum-exp (B, H, Tq) float32."""
    flash = _flash_cpu()
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    P, r = Tk - Tq, H // Hkv
    o1, l1 = flash(q.reshape(B, Hkv, r * Tq, D), k[:, :, :P], v[:, :, :P], scale=scale)  # (B, Hkv, r*Tq, Dv)
    o1, l1 = o1.reshape(B, H, Tq, -1), l1.reshape(B, H, Tq)
    o2, l2 = flash(q, expand_kv(k[:, :, P:], H), expand_kv(v[:, :, P:], H), is_causal=True, scale=scale)
    lse = torch.logaddexp(l1, l2)  # (B, H, Tq) float32
    out = o1.float() * (l1 - lse).exp()[..., None] + o2.float() * (l2 - lse).exp()[..., None]
    return out.to(q.dtype), lse


def unmasked_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Every query sees every key (decoding): the fused CPU kernel with the r query heads of each
    key-value head stacked on the query axis. -> output (B, H, Tq, Dv), log-sum-exp (B, H, Tq)."""
    B, H, Tq, D = q.shape
    Hkv = k.shape[1]
    out, lse = _flash_cpu()(q.reshape(B, Hkv, H // Hkv * Tq, D), k, v, scale=scale)
    return out.reshape(B, H, Tq, -1), lse.reshape(B, H, Tq)


def _common(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """q, k, v in one dtype for torch's fused CPU op, which (unlike F.scaled_dot_product_attention)
    neither autocasts nor mixes dtypes: the autocast dtype when autocast is on (training), else q's."""
    dt = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else q.dtype
    return q.to(dt), k.to(dt), v.to(dt)


def _lse_kernel(q: torch.Tensor) -> bool:
    """Whether sinks can use the fused CPU kernel's log-sum-exp: at inference (its backward does
    not carry a gradient through the log-sum-exp, so training takes the sink-key path, which
    autograd differentiates exactly) and in float32 at most (its log-sum-exp is float32, so
    float64 runs take the sink-key path too and stay float64-exact)."""
    return (q.device.type == "cpu" and q.dtype in SPLIT_DTYPES and _flash_cpu() is not None
            and not (torch.is_grad_enabled() and q.requires_grad))


def sink_key(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor, scale: float):
    """Sinks as one more key for a standard attention call: the query of head h gets one more
    feature, s_h / scale; the sink key holds 1 there (real keys 0) and value 0, so its logit is
    s_h for every query of head h. One sink key serves every head, so key-value heads stay
    shared (GQA, no copy per query head). The sink key is first, so a query at the end of
    Tk + 1 keys sees it. Features are padded by 8 to keep widths kernel-friendly.
    -> q (B, H, Tq, D + 8), k (B, Hkv, Tk + 1, D + 8), v (B, Hkv, Tk + 1, Dv)."""
    B, _, _, D = q.shape
    Hkv = k.shape[1]
    qq = F.pad(q, (0, 8))
    qq[..., D] = (sinks.to(q.dtype) / scale)[None, :, None]
    sink = k.new_zeros(B, Hkv, 1, D + 8)
    sink[..., D] = 1
    kk = torch.cat((sink, F.pad(k, (0, 8))), dim=2)
    return qq, kk, torch.cat((v.new_zeros(B, Hkv, 1, v.shape[-1]), v), dim=2)


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

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, logit_fn=None,
               sinks: torch.Tensor | None = None, window: int | None = None) -> torch.Tensor:
        """q (B, H, Tq, D); k, v (B, Hkv, Tk, .) -> (B, H, Tq, Dv). `sinks` (H,): a logit per head
        in every row's denominator; `window`: each query sees its `window` most recent keys."""
        assert logit_fn is None, "logit transforms need the reference backend"
        if window is not None and window < k.shape[2]:
            return self._windowed(q, k, v, scale, sinks, window)
        if sinks is None:
            return self._causal(q, k, v, scale)
        if _lse_kernel(q):
            q, k, v = _common(q, k, v)
            out, lse = self._causal_lse(q, k, v, scale)
            return (out.float() * sink_factor(lse, sinks)).to(q.dtype)
        return self._causal(*sink_key(q, k, v, sinks, scale), scale)

    def _causal_lse(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
        """Causal attention and its log-sum-exp on the CPU's fused kernel (B, H, Tq, Dv), (B, H, Tq)."""
        H, Tq, Tk = q.shape[1], q.shape[2], k.shape[2]
        flash = _flash_cpu()
        if Tq == Tk:
            return flash(q, expand_kv(k, H), expand_kv(v, H), is_causal=True, scale=scale)
        if Tq == 1:
            return unmasked_lse(q, k, v, scale)
        if Tk - Tq >= SPLIT_MIN_PREFIX:
            return split_attend_lse(q, k, v, scale)
        block = max(1, MASK_ELEMENTS // Tk)
        kk, vv = expand_kv(k, H), expand_kv(v, H)
        parts = [flash(q[:, :, s:s + block], kk, vv, scale=scale,
                       attn_mask=_causal_mask(s, min(Tq, s + block), Tq, Tk, q.device, q.dtype))
                 for s in range(0, Tq, block)]
        return torch.cat([o for o, _ in parts], dim=2), torch.cat([lse for _, lse in parts], dim=2)

    def _windowed(self, q, k, v, scale: float, sinks, window: int) -> torch.Tensor:
        """Sliding-window attention in query blocks, each over the keys its queries can see."""
        if sinks is not None and _lse_kernel(q):
            q, k, v = _common(q, k, v)
        H, Tq, Tk = q.shape[1], q.shape[2], k.shape[2]
        offset, block = Tk - Tq, max(WINDOW_BLOCK, window)
        outs = []
        for s in range(0, Tq, block):
            e = min(Tq, s + block)
            lo = max(0, offset + s - window + 1)
            valid = causal_valid(torch.arange(offset + s, offset + e, device=q.device), offset + e - lo, window, lo)
            mask = torch.zeros(valid.shape, dtype=q.dtype, device=q.device).masked_fill_(~valid, -math.inf)
            qb, kb, vb = q[:, :, s:e], k[:, :, lo:offset + e], v[:, :, lo:offset + e]
            if sinks is None:
                outs.append(F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=scale,
                                                           enable_gqa=k.shape[1] != H))
            elif _lse_kernel(q):
                out, lse = _flash_cpu()(qb, expand_kv(kb, H), expand_kv(vb, H), attn_mask=mask, scale=scale)
                outs.append((out.float() * sink_factor(lse, sinks)).to(q.dtype))
            else:
                qs, ks, vs = sink_key(qb, kb, vb, sinks, scale)
                outs.append(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=F.pad(mask, (1, 0)), scale=scale,
                                                           enable_gqa=ks.shape[1] != H))
        return torch.cat(outs, dim=2)

    def _causal(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """Causal attention of the last Tq of Tk positions, through the cheapest fused call."""
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
