"""Random tiny Hugging Face checkpoints written with save_pretrained, for parity tests."""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 300


def _byte_level_tokenizer(directory: Path) -> None:
    """A real (tiny) BPE tokenizer.json trained here, so HF directories are complete."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    text = ["The magic number for Paris is 1234567. What is the magic number for Paris?"] * 20
    tok.train_from_iterator(text, trainer)
    tok.save(str(directory / "tokenizer.json"))


# Gemma 2: a head width of its own, a sliding window (every other layer) shorter than the tests' prompts
FOREIGN = {"gemma2": {"head_dim": 16, "sliding_window": 24, "pad_token_id": 1}, "phi3": {"pad_token_id": 1},
           "olmo2": {"pad_token_id": 1}}


def make_hf(kind: str, directory: Path, *, n_kv: int = 4, tied: bool = False, seed: int = 0,
            layers: int = 3, heads: int = 4, rope: dict | None = None, hidden: int = 64,
            max_pos: int = 512, sharded: bool = False, **extra) -> Path:
    """Save a random tiny `kind` model (llama | mistral | qwen2 | qwen3 | qwen3_5 | diffllama, or one of
    FOREIGN) to `directory`; `extra` overrides config fields."""
    import transformers as tf

    cls = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
        "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM),
        "qwen3_5": (tf.Qwen3_5TextConfig, tf.Qwen3_5ForCausalLM),
        "diffllama": (tf.DiffLlamaConfig, tf.DiffLlamaForCausalLM),
        # architectures diffeval does not implement (run through --engine hf)
        "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM),
        "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM),
        "olmo2": (tf.Olmo2Config, tf.Olmo2ForCausalLM),
    }[kind]
    kwargs = dict(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden + 16, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=n_kv, max_position_embeddings=max_pos,
        tie_word_embeddings=tied, rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=1,
    )
    if rope is not None:
        kwargs["rope_parameters"] = rope
    if kind in ("qwen3", "qwen3_5"):
        kwargs["head_dim"] = hidden // heads
    if kind == "qwen3_5":  # every layer full (gated) attention; rotary over the whole head unless asked
        kwargs["layer_types"] = ["full_attention"] * layers
        kwargs.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": 10000.0,
                                              "partial_rotary_factor": 1.0})
    kwargs.update(FOREIGN.get(kind, {}))
    kwargs.update(extra)
    config = cls[0](**kwargs)
    torch.manual_seed(seed)
    model = cls[1](config).eval()
    with torch.no_grad():  # make norms and lambdas non-trivial so that they are tested
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif "lambda_" in name:
                p.copy_(0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory), max_shard_size="50KB" if sharded else "5GB")
    _byte_level_tokenizer(directory)
    return directory


def hf_model(directory: Path, attn: str = "eager"):
    import transformers as tf

    return tf.AutoModelForCausalLM.from_pretrained(str(directory), attn_implementation=attn).eval()
