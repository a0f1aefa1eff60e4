"""Model stack: ModelConfig, the shared decoder, attention families, KV cache, capture."""

from diffeval.models.cache import KVCache
from diffeval.models.config import ModelConfig, RopeConfig
from diffeval.models.decoder import Decoder
from diffeval.models.inspect import ActivationStats, Capture, LayerStats

__all__ = ["ActivationStats", "Capture", "Decoder", "KVCache", "LayerStats", "ModelConfig", "RopeConfig"]
