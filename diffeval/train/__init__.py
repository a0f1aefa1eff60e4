"""Tiny-model training for the zoo: synthetic corpus, tokenizer, trainer, circuit init."""
