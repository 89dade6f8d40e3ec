"""Checkpoints that resume exactly and survive a crash mid-save; the final Hugging Face export.

A checkpoint is `output_dir/checkpoint-<step>/`: `accelerator.save_state` (model, optimizer, every
object registered for checkpointing such as the LR scheduler, the RNG states of every rank) plus
`trainer_state.json` (step, epoch, step in epoch, counters). It is written under a temporary name
and renamed when complete, and `trainer_state.json` is the last file written inside it, so a
directory named `checkpoint-<step>` that holds `trainer_state.json` is complete. A crash mid-save
leaves only a `.tmp-checkpoint-*` folder, which resuming ignores and the next save removes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from longpo.files import atomic_write_json, atomic_write_jsonl, read_jsonl

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str, output_dir: str | os.PathLike) -> Path | None:
    """`resume`: "auto" (latest complete checkpoint in output_dir, or none), "none", or a checkpoint path."""
    if resume == "none":
        return None
    if resume == "auto":
        found = checkpoint_dirs(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"resume={resume!r}: no complete checkpoint there (missing {STATE_FILE}); "
                                f"complete ones in {output_dir}: {[p.name for p in checkpoint_dirs(output_dir)]}")
    return path


def save_checkpoint(accelerator: Any, output_dir: str | os.PathLike, state: dict, keep: int) -> Path:
    """Write checkpoint-<step> atomically on every rank's behalf, then keep only the newest `keep`."""
    out = Path(output_dir)
    final = out / f"checkpoint-{state['step']:07d}"
    tmp = out / f".tmp-checkpoint-{state['step']:07d}"
    if accelerator.is_main_process:
        for stale in out.glob(".tmp-checkpoint-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # every rank: ZeRO-3 / FSDP shards, per-rank RNG states
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / STATE_FILE, state)
        if final.exists():  # a checkpoint of the same step from a run that crashed before pruning
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoint_dirs(out)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, path: str | os.PathLike) -> dict:
    """Restore everything `save_checkpoint` wrote (call after `accelerator.prepare`); return the trainer state."""
    accelerator.load_state(str(path))
    with open(Path(path) / STATE_FILE, encoding="utf-8") as f:
        return json.load(f)


def truncate_metrics(path: str | os.PathLike, step: int) -> None:
    """Drop metric rows logged after `step` (a resumed run logs them again)."""
    path = Path(path)
    if path.is_file():
        atomic_write_jsonl(path, [r for r in read_jsonl(path, tolerate_torn_tail=True) if r.get("step", 0) <= step])


def export_model(accelerator: Any, module: Any, tokenizer: Any, out_dir: str | os.PathLike,
                 prefix: str = "model.") -> Path:
    """Save the policy as a plain Hugging Face model dir (safetensors, config, tokenizer).

    `module` is the prepared training module whose attribute `model` is the Hugging Face model;
    `accelerator.get_state_dict` gathers ZeRO-3 / FSDP shards to the main process, and the keys
    lose the wrapper's `prefix`. The shared-prefix attention name is not written to config.json,
    so the directory loads in a fresh process without longpo.
    """
    out = Path(out_dir)
    full = accelerator.get_state_dict(module)
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(module).model
        state_dict = {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}
        assert len(state_dict) == len(full), f"state dict keys outside {prefix!r}: {sorted(set(full))[:5]}"
        tmp = out.with_name(f".tmp-{out.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    accelerator.wait_for_everyone()
    return out
