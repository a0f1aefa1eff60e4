"""Small builders shared by tests."""

from __future__ import annotations

from pathlib import Path

import torch

from diffeval.models import Decoder, ModelConfig


def tiny_config(family: str = "transformer", **overrides) -> ModelConfig:
    base = dict(family=family, vocab_size=300, d_model=64, n_layers=2, n_heads=4, d_ff=96, max_seq_len=4096)
    if family == "sha":
        base.update(n_heads=1, d_head=32)
    if family == "diff":
        base.update(n_heads=2)
    base.update(overrides)
    return ModelConfig(**base)


def tiny_model(family: str = "transformer", seed: int = 0, dtype=torch.float32, backend: str = "sdpa", **overrides) -> Decoder:
    model = Decoder(tiny_config(family, **overrides), backend=backend)
    model.init_weights(seed)
    with torch.no_grad():  # larger weights than a fresh init so attention is far from uniform
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(8)
    return model.to(dtype).eval()


def rope64(T: int, d: int, theta: float = 10000.0):
    """Float64 rotary embedding for positions 0..T-1, rotate_half convention (pairs i and
    i + d/2), written from the definition: returns rot(t) for t (B, T, n, d)."""
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None]
    cos, sin = torch.cat((ang, ang), -1).cos()[:, None], torch.cat((ang, ang), -1).sin()[:, None]

    def rot(t):
        h = d // 2
        return t * cos + torch.cat((-t[..., h:], t[..., :h]), -1) * sin

    return rot


def argmax_continuation(model, prompt: list[int], n: int, stop_ids=frozenset()) -> list[int]:
    """Greedy continuation of `prompt` written from the definition: one full forward pass (no
    cache) per new token, argmax of the last logits, ending before a token in `stop_ids` or
    after `n`. The reference that cached and batched decoding are compared with."""
    seq, out = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            tok = int(model(torch.tensor([seq]))[0, -1].argmax())
            if tok in stop_ids:
                break
            out.append(tok)
            seq.append(tok)
    return out


def saved_tiny_models(root) -> list[str]:
    """A transformer and a DIFF tiny model saved natively (byte tokenizer, 1024 positions)."""
    import diffeval

    out = []
    for family in ("transformer", "diff"):
        diffeval.save(tiny_model(family, vocab_size=259, max_seq_len=1024), root / family)
        out.append(str(root / family))
    return out


def copy_zoo_model(name: str, target) -> Path:
    """A standalone copy of a zoo model at `target`: its folder plus the tokenizer files the zoo
    models share."""
    import shutil

    from diffeval.checkpoints import TOKENIZER_FILES
    from diffeval.checkpoints.zoo import tokenizer_dir, zoo_path

    src, target = zoo_path(name), Path(target)
    shutil.copytree(src, target)
    for f in TOKENIZER_FILES:
        if (tokenizer_dir(src) / f).is_file():
            shutil.copyfile(tokenizer_dir(src) / f, target / f)
    return target


def run_cli(argv) -> int:
    """Exit code of a diffeval command run in-process (0 when it returns normally)."""
    from diffeval.cli import main

    try:
        main(argv)
    except SystemExit as exc:
        return exc.code
    return 0


def interrupt_after(monkeypatch, n: int) -> None:
    """Make the n-th finished sample raise KeyboardInterrupt right after it is saved (Ctrl-C)."""
    import diffeval.results as results_mod

    original = results_mod.ResumeCache.put
    calls = {"n": 0}

    def put_then_stop(self, key, value, **kwargs):
        original(self, key, value, **kwargs)
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt

    monkeypatch.setattr(results_mod.ResumeCache, "put", put_then_stop)


def unilm_state(model) -> dict:
    """A diff model's weights written INTO the layout of Microsoft's reference code (written
    here head by head from REFERENCE.md, independent of diffeval.checkpoints.unilm): q heads
    i -> 2i, i + H -> 2i + 1; kv heads g -> 2g, g + G -> 2g + 1 (G = n_kv_heads / 2); RoPE rows
    of each head in interleaved order (half-split row m -> 2m, m + d/2 -> 2m + 1); value heads g
    and g + G joined into one 2d head g; o_proj -> out_proj; subln.weight when the model has one."""
    cfg = model.cfg
    H, d, G = cfg.n_heads, cfg.d_head, cfg.n_kv_heads // 2
    assert cfg.family == "diff" and cfg.n_kv_heads % 2 == 0

    def interleave(head):  # (d, C) half-split rows -> interleaved rows
        out = torch.empty_like(head)
        for m in range(d // 2):
            out[2 * m], out[2 * m + 1] = head[m], head[m + d // 2]
        return out

    def pairs(w, n):  # internal (2n * d, C), maps 1 then maps 2 -> interleaved Q1/Q2 pairs
        heads = w.reshape(2 * n, d, -1)
        out = []
        for i in range(n):
            out += [interleave(heads[i]), interleave(heads[i + n])]
        return torch.cat(out)

    out = {}
    for name, t in model.state_dict().items():
        t = t.detach().clone()
        if name.endswith("attn.q_proj.weight"):
            t = pairs(t, H)
        elif name.endswith("attn.k_proj.weight"):
            t = pairs(t, G)
        elif name.endswith("attn.v_proj.weight"):
            heads = t.reshape(2 * G, d, -1)
            t = torch.cat([torch.cat((heads[g], heads[g + G])) for g in range(G)])
        elif name.endswith("attn.o_proj.weight"):
            name = name.replace("o_proj", "out_proj")
        out[name] = t.contiguous()
    return out


def unilm_config(model, **extra) -> dict:
    """The config file a user of the reference code writes for `model` (a diff model)."""
    cfg = model.cfg
    return {"format": "unilm", "vocab_size": cfg.vocab_size, "embed_dim": cfg.d_model, "num_layers": cfg.n_layers,
            "num_heads": cfg.n_heads, "num_kv_heads": cfg.n_kv_heads // 2, "head_dim": cfg.d_head,
            "ffn_dim": cfg.d_ff, "max_seq_len": cfg.max_seq_len, "rope_theta": cfg.rope.theta,
            "norm_eps": cfg.norm_eps, "subln_eps": cfg.norm_eps, "tie_embeddings": cfg.tie_embeddings, **extra}


class LoopbackServer:
    """An HTTP server on 127.0.0.1 in a daemon thread; `post(handler)` answers each POST (a
    client that gives up mid-reply is ignored). `url` is its API base (`.../v1`)."""

    def __init__(self, post) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                try:
                    post(self)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
