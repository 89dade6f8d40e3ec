"""The built wheel works on its own: installed into a fresh virtual environment and run from a folder
outside the repository, it carries the demo's base model and the recipes (`--config tiny`).

The venv reuses the running environment's packages through a `.pth` line (a path only: the `.pth`
files of that environment, e.g. an editable longpo, are not run), so nothing is downloaded and torch
is not installed again; `longpo` itself must come from the wheel.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(".git", ".venv", "venv", "runs", "build", "dist", "*.egg-info", "__pycache__",
                              ".pytest_cache", ".ruff_cache")
SHORT_DEMO = """\
documents: 6
threads: 1
iterations: [{name: it1, length: 256, rope_theta: 20000.0}]
baselines: []
train: {pairs_per_micro_batch: 4, gradient_accumulation_steps: 1, num_epochs: 1, save_steps: 0}
eval: {toy: {lengths: [128, 256], num_samples: 4}}
"""


def run(cmd, cwd, env, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_wheel_installed_outside_the_repository_runs_the_demo_and_a_named_recipe(tmp_path):
    src = tmp_path / "src"  # build from a copy: pip builds in place and would leave build/ in the checkout
    shutil.copytree(ROOT, src, ignore=SKIP)
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(src)],
        tmp_path, dict(os.environ))
    (wheel,) = dist.glob("longpo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("longpo/demo/base_model/model.safetensors", "longpo/demo/base_model/tokenizer.json",
                   "longpo/demo/base_model/chat_template.jinja", "longpo/recipes/tiny.yaml",
                   "longpo/recipes/mistral-7b-128k.yaml", "longpo/recipes/accelerate/zero3.yaml",
                   "longpo/recipes/deepspeed/zero3.json"):
        assert needed in names, f"{wheel.name} lacks {needed}"

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    site = Path(run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path,
                    dict(os.environ)).strip())
    (site / "reuse_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], tmp_path, env)
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = run([str(py), "-c", "import longpo; print(longpo.__file__)"], work, env).strip()
    assert where.startswith(str(site)), f"longpo imported from {where}, not from the installed wheel"
    longpo = str(env_dir / "bin" / "longpo")

    run([longpo, "train", "--config", "tiny", "output_dir=runs/tiny", "tiny_records=8", "max_steps=2"], work, env)
    assert (work / "runs" / "tiny" / "final" / "config.json").is_file()
    assert (work / "runs" / "tiny" / "training.png").is_file()

    (work / "short_demo.yaml").write_text(SHORT_DEMO)
    out = run([longpo, "demo", "--config", "short_demo.yaml", "output_dir=runs/demo"], work, env)
    assert "| LongPO |" in out and (work / "runs" / "demo" / "report" / "accuracy.png").is_file()

    run([longpo, "recipes", "copy", "accelerate/zero3"], work, env)
    assert str(site) in (work / "zero3.yaml").read_text()
