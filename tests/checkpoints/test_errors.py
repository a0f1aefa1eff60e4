"""Bad checkpoints: exit code 2 and one line naming the file or tensor, through `diffeval info`."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffeval.cli import main


def run_info(capsys, path, *extra):
    with pytest.raises(SystemExit) as exc:
        main(["info", "--ckpt", str(path), *extra])
    err = capsys.readouterr().err
    return exc.value.code, err


def _copy(hf_dir, tmp_path, kind="llama"):
    src = hf_dir(kind, n_kv=2)
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (path / "config.json").write_text(json.dumps(cfg))


def assert_one_line(code, err, *needles):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_good_checkpoint_prints_info(hf_dir, capsys):
    main(["info", "--ckpt", str(hf_dir("llama", n_kv=2)), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["family"] == "transformer" and data["n_kv_heads"] == 2 and len(data["sha256"]) == 64
    assert data["n_params"] == 139456 + 300 * 64  # untied head


def test_missing_config(tmp_path, hf_dir, capsys):
    path = _copy(hf_dir, tmp_path)
    (path / "config.json").unlink()
    assert_one_line(*run_info(capsys, path), "config.json", "missing")


def test_missing_weights(tmp_path, hf_dir, capsys):
    path = _copy(hf_dir, tmp_path)
    (path / "model.safetensors").unlink()
    assert_one_line(*run_info(capsys, path), "no weights")


def test_truncated_safetensors(tmp_path, hf_dir, capsys):
    path = _copy(hf_dir, tmp_path)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert_one_line(*run_info(capsys, path), "model.safetensors", "truncated")


def test_wrong_shape(tmp_path, hf_dir, capsys):
    path = _copy(hf_dir, tmp_path)
    state = load_file(path / "model.safetensors")
    state["model.layers.1.self_attn.k_proj.weight"] = torch.zeros(3, 64)
    save_file(state, path / "model.safetensors")
    assert_one_line(*run_info(capsys, path), "model.layers.1.self_attn.k_proj.weight", "(3, 64)", "model.safetensors")


def test_missing_tensor(tmp_path, hf_dir, capsys):
    path = _copy(hf_dir, tmp_path)
    state = load_file(path / "model.safetensors")
    del state["model.layers.2.mlp.up_proj.weight"]
    save_file(state, path / "model.safetensors")
    assert_one_line(*run_info(capsys, path), "missing tensor", "model.layers.2.mlp.up_proj.weight")


def test_unexpected_tensor(tmp_path, hf_dir, capsys):
    path = _copy(hf_dir, tmp_path)
    state = load_file(path / "model.safetensors")
    state["model.layers.0.self_attn.extra.weight"] = torch.zeros(2)
    save_file(state, path / "model.safetensors")
    assert_one_line(*run_info(capsys, path), "unexpected tensor", "model.layers.0.self_attn.extra.weight")


def test_unknown_architecture(tmp_path, hf_dir, capsys):
    path = _copy(hf_dir, tmp_path)
    _edit_config(path, architectures=["GPTNeoXForCausalLM"], model_type="gpt_neox")
    assert_one_line(*run_info(capsys, path), "GPTNeoXForCausalLM", "config.json", "LlamaForCausalLM")


def test_unsupported_rope_scaling(tmp_path, hf_dir, capsys):
    path = _copy(hf_dir, tmp_path)
    _edit_config(path, rope_parameters={"rope_type": "longrope", "factor": 4.0, "rope_theta": 10000.0})
    assert_one_line(*run_info(capsys, path), "longrope", "config.json")


def test_unsupported_rope_scaling_in_legacy_form(tmp_path, hf_dir, capsys):
    path = _copy(hf_dir, tmp_path)
    _edit_config(path, rope_parameters=None, rope_theta=10000.0, rope_scaling={"type": "dynamic", "factor": 2.0})
    assert_one_line(*run_info(capsys, path), "dynamic")


def test_pickle_needs_opt_in(tmp_path, hf_dir, capsys):
    path = _copy(hf_dir, tmp_path)
    state = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    torch.save(state, path / "pytorch_model.bin")
    assert_one_line(*run_info(capsys, path), "pytorch_model.bin", "--allow-pickle")
    main(["info", "--ckpt", str(path), "--allow-pickle", "--json"])
    assert json.loads(capsys.readouterr().out)["files"] == ["pytorch_model.bin"]


def test_auto_map_is_never_executed(tmp_path, hf_dir, capsys):
    path = _copy(hf_dir, tmp_path)
    marker = tmp_path / "executed"
    (path / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    _edit_config(path, auto_map={"AutoModelForCausalLM": "evil.EvilModel"})
    main(["info", "--ckpt", str(path), "--json"])
    assert json.loads(capsys.readouterr().out)["architecture"] == "LlamaForCausalLM"
    assert not marker.exists()


def test_missing_directory(tmp_path, capsys):
    assert_one_line(*run_info(capsys, tmp_path / "nope"), "nope", "no such checkpoint")


def test_unknown_zoo_name(capsys):
    code, err = run_info(capsys, "zoo:no-such-model")
    assert_one_line(code, err, "no-such-model")


def test_console_script_exit_code_and_single_line(tmp_path, hf_dir):
    path = _copy(hf_dir, tmp_path)
    (path / "config.json").unlink()
    proc = subprocess.run([sys.executable, "-m", "diffeval", "info", "--ckpt", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "config.json" in proc.stderr
