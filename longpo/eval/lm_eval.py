"""Short-context tasks (MMLU, ARC-C, HellaSwag, Winogrande) through lm-evaluation-harness, offline.

lm-eval is an optional extra (`pip install 'longpo[eval]'`). Its built-in tasks load their data
with `datasets.load_dataset(<hub id>)`; offline there are three ways to point it at local copies:

1. `short.dataset_paths: {arc_challenge: /data/ai2_arc}`: a registered single task keeps its
   prompts and metrics, and reads `dataset_path` from the local folder (a copy of the dataset
   repository, or any folder `datasets.load_dataset` can read).
2. `short.include_path: /data/lm_eval_tasks`: a folder of task YAMLs (your own, or copies of the
   built-in ones with `dataset_path: json` / `parquet` and `dataset_kwargs: {data_files: ...}`).
   Groups such as `mmlu` are best handled this way or by 3.
3. A Hugging Face datasets cache filled on a machine with access, copied here, with
   `HF_DATASETS_OFFLINE=1` (set by `longpo eval` whenever `short.offline` is true).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# The paper's metric per task: acc_norm where lm-eval reports it for these, acc otherwise.
PREFERRED_METRICS = {"arc_challenge": "acc_norm", "hellaswag": "acc_norm", "mmlu": "acc", "winogrande": "acc"}


def _require_lm_eval():
    try:
        import lm_eval
    except ImportError as e:
        raise ImportError("short-context evaluation needs lm-eval: pip install 'longpo[eval]' "
                          "(or pip install lm-eval==0.4.13)") from e
    return lm_eval


def _task_spec(manager: Any, name: str, dataset_path: str | None) -> str | dict:
    if dataset_path is None:
        return name
    from lm_eval.tasks._yaml_loader import load_yaml

    if not Path(dataset_path).exists():
        raise FileNotFoundError(f"short.dataset_paths.{name}: {dataset_path} does not exist")
    entry = manager._entry(name)
    if entry is None or entry.yaml_path is None:
        raise ValueError(f"short.dataset_paths.{name}: {name!r} is not a registered lm-eval task with a YAML")
    cfg = load_yaml(entry.yaml_path, resolve_func=True)
    if "task" not in cfg:
        raise ValueError(f"short.dataset_paths.{name}: {name!r} is a group; point short.include_path at local "
                         "task YAMLs for its subtasks instead")
    return {**cfg, "dataset_path": str(dataset_path)}


def _pick_metric(task: str, metrics: dict[str, Any]) -> tuple[str, float]:
    preferred = PREFERRED_METRICS.get(task, "acc")
    for name in (preferred, "acc_norm", "acc", "exact_match"):
        value = metrics.get(f"{name},none")
        if isinstance(value, (int, float)):
            return name, float(value)
    raise KeyError(f"lm-eval reported no accuracy for {task!r}; got {sorted(metrics)}")


def run_short_tasks(model_path: str, tasks: dict[str, int], out_dir: str | os.PathLike,
                    include_path: str | None = None, dataset_paths: dict[str, str] | None = None,
                    batch_size: int = 8, limit: int | None = None, dtype: str = "auto", device: str | None = None,
                    offline: bool = True) -> dict[str, float]:
    """Run each `task: num_fewshot` with lm-eval's HF model on a local checkpoint; scores x100.

    `device` None: cuda when there is one, else cpu. Raw lm-eval results go to `out_dir/short/<task>.json`; a task already there is not rerun.
    """
    from longpo.files import atomic_write_json

    if offline:
        os.environ["HF_DATASETS_OFFLINE"] = "1"
        os.environ["HF_HUB_OFFLINE"] = "1"
    lm_eval = _require_lm_eval()
    from lm_eval.tasks import TaskManager

    if not Path(model_path).exists():
        raise FileNotFoundError(f"checkpoint {model_path} does not exist")
    if include_path is not None and not Path(include_path).is_dir():
        raise FileNotFoundError(f"short.include_path {include_path} is not a folder")
    manager = TaskManager(include_path=include_path)
    if device is None:  # lm-eval's own default is "cuda", which a CPU-only torch cannot load onto
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    model_args = {"pretrained": str(model_path), "dtype": dtype, "device": device}
    scores: dict[str, float] = {}
    import json

    for task, shots in tasks.items():
        out = Path(out_dir) / "short" / f"{task}.json"
        if out.exists():
            saved = json.loads(out.read_text(encoding="utf-8"))
            scores[task] = saved["score"]
            continue
        spec = _task_spec(manager, task, (dataset_paths or {}).get(task))
        results = lm_eval.simple_evaluate(
            model="hf", model_args=model_args, tasks=[spec], num_fewshot=shots, batch_size=batch_size,
            limit=limit, task_manager=manager, log_samples=False, random_seed=0, numpy_random_seed=0,
            torch_random_seed=0, fewshot_random_seed=0,
        )
        if results is None:  # non-zero ranks under lm-eval's own distributed launch
            continue
        metrics = results["results"][task]
        metric, value = _pick_metric(task, metrics)
        scores[task] = 100.0 * value
        atomic_write_json(out, {"task": task, "num_fewshot": shots, "metric": metric, "score": scores[task],
                                "limit": limit, "results": json.loads(json.dumps(metrics, default=str))})
    return scores
