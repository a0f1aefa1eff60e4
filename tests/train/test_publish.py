"""Publishing into the zoo keeps one tokenizer: the first model's becomes the shared one, an
identical one is not copied again, a different one stays with its model (found first)."""

from pathlib import Path

from diffeval.checkpoints.zoo import tokenizer_dir
from diffeval.train.publish import copy_checkpoint


def _run(root: Path, vocab: str) -> Path:
    root.mkdir(parents=True)
    for name, text in (("config.json", "{}"), ("model.safetensors", "w"), ("tokenizer.json", vocab),
                       ("tokenizer_config.json", "{}")):
        (root / name).write_text(text)
    return root


def test_the_zoo_keeps_one_tokenizer_and_a_different_one_stays_with_its_model(tmp_path):
    zoo = tmp_path / "zoo"
    copy_checkpoint(_run(tmp_path / "a", "v1"), zoo / "a")
    copy_checkpoint(_run(tmp_path / "b", "v1"), zoo / "b")
    assert (zoo / "tokenizer.json").read_text() == "v1"
    assert sorted(p.name for p in (zoo / "a").iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in (zoo / "b").iterdir()) == ["config.json", "model.safetensors"]
    copy_checkpoint(_run(tmp_path / "c", "v2"), zoo / "c")
    assert (zoo / "c" / "tokenizer.json").read_text() == "v2" and tokenizer_dir(zoo / "c") == zoo / "c"
    copy_checkpoint(tmp_path / "a", zoo / "c")  # republished with the shared tokenizer: its own copy goes
    assert not (zoo / "c" / "tokenizer.json").exists() and (zoo / "tokenizer.json").read_text() == "v1"
