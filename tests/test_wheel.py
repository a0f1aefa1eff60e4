"""The built wheel ships what the examples need (zoo models and their shared tokenizer, task
presets, figure recipes), and, installed into a fresh environment and run from a folder
outside the checkout, the CLI's examples work by name."""

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import diffeval
from diffeval.catalog import figure_recipes, task_presets
from diffeval.checkpoints.zoo import zoo_models

pytestmark = pytest.mark.integration

ROOT = Path(diffeval.__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of a copy of the package (no network: the installed setuptools builds it)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    shutil.copytree(ROOT / "diffeval", src / "diffeval", ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "w"), str(src)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    return next((tmp / "w").glob("diffeval-*.whl"))


def test_the_wheel_ships_the_zoo_presets_and_recipes(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in zoo_models():
        for f in ("config.json", "model.safetensors", "zoo.json", f"{name}.md"):
            assert f"diffeval/zoo/{name}/{f}" in names, f"{f} of {name} missing from the wheel"
    assert {"diffeval/zoo/tokenizer.json", "diffeval/zoo/tokenizer_config.json"} <= names
    for path in (*task_presets().values(), *figure_recipes().values()):
        assert f"diffeval/{path.parent.name}/{path.name}" in names, f"{path.name} missing from the wheel"
    assert not any(n.startswith(("tasks/", "tests/")) for n in names)


def _environment(root: Path, wheel: Path) -> Path:
    """A fresh venv with the wheel installed (no dependencies fetched: the venv reads this
    environment's site-packages after its own). Returns its bin folder."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    Path(own, "deps-of-the-test.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return root / "bin"


def test_installed_wheel_runs_the_examples_by_name_outside_the_checkout(wheel, tmp_path):
    bin_dir = _environment(tmp_path / "env", wheel)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="2")

    def diffeval_cli(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(bin_dir / "diffeval"), *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
        return proc

    where = subprocess.run([str(bin_dir / "python"), "-c", "import diffeval; print(diffeval.__file__)"], cwd=work,
                           env=env, capture_output=True, text=True, check=True, timeout=120).stdout
    assert Path(where.strip()).is_relative_to(tmp_path / "env"), where  # the installed copy, not the checkout
    listed = diffeval_cli("tasks").stdout
    assert "needle-paper-4k" in listed and "paper" in listed
    diffeval_cli("run", "needle-paper-4k", "--ckpt", "zoo:transformer-tiny", "--len", "512", "--samples", "1",
                 "--out", "RUN")
    runs = sorted((work / "RUN").glob("*/results.json"))
    assert len(runs) == 4 and all((r.parent / "samples.jsonl").is_file() for r in runs)
    diffeval_cli("figures", "paper", "--results", "RUN", "--out", "FIG")
    for name in ("needle_heatmap.png", "needle_heatmap.pdf", "multi_needle_table.tex", "multi_needle_table.md"):
        assert (work / "FIG" / name).stat().st_size > 200, name
