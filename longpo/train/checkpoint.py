"""Checkpoints that resume exactly and survive a crash mid-save; the final Hugging Face export.

A checkpoint is `output_dir/checkpoint-<step>/`: `accelerator.save_state` (model, optimizer, every
object registered for checkpointing such as the LR scheduler, the RNG states of every rank) plus
`trainer_state.json` (step, epoch, step in epoch, counters). It is written under a temporary name
and renamed when complete, and `trainer_state.json` is the last file written inside it, so a
directory named `checkpoint-<step>` that holds `trainer_state.json` is complete. A crash mid-save
leaves only a `.tmp-checkpoint-*` folder, which resuming ignores and the next save removes.

Before each save the free space of output_dir is checked against the size of the newest complete
checkpoint (the first time: the bytes of the model and optimizer tensors), plus `SPACE_MARGIN`;
a save that still runs out of space removes its temporary folder and raises `WriteError`, so the
previous checkpoint stays the newest and the same command resumes from it once there is space.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from longpo.data.records import RECORD_SUFFIXES
from longpo.data.released import is_released
from longpo.errors import InputError
from longpo.files import (
    WriteError,
    atomic_write_json,
    atomic_write_jsonl,
    check_writable,
    free_text,
    read_jsonl,
    require_free,
)
from longpo.fingerprint import guard, identity, remove
from longpo.train.config import TINY, Config

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")
SPACE_MARGIN = 1.05


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
        raise InputError(f"resume={resume!r}: no complete checkpoint there (missing {STATE_FILE}); "
                                f"complete ones in {output_dir}: {[p.name for p in checkpoint_dirs(output_dir)]}")
    return path


def save_checkpoint(accelerator: Any, output_dir: str | os.PathLike, state: dict, keep: int) -> Path:
    """Write checkpoint-<step> atomically on every rank's behalf, then keep only the newest `keep`."""
    out = Path(output_dir)
    final = out / f"checkpoint-{state['step']:07d}"
    tmp = out / f".tmp-checkpoint-{state['step']:07d}"
    problem = ""
    if accelerator.is_main_process:
        for stale in out.glob(".tmp-checkpoint-*"):
            shutil.rmtree(stale, ignore_errors=True)
        try:
            require_free(out, int(checkpoint_bytes(accelerator, out) * SPACE_MARGIN), f"checkpoint-{state['step']}")
            tmp.mkdir(parents=True)
        except (WriteError, OSError) as e:
            problem = str(e)
    _raise_together(accelerator, problem)
    try:
        accelerator.save_state(str(tmp))  # every rank: ZeRO-3 / FSDP shards, per-rank RNG states
    except Exception as e:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        _raise_if_full(e, f"{tmp}: writing checkpoint-{state['step']}", out,
                      "the temporary folder was removed and the last complete checkpoint is intact")
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        try:
            atomic_write_json(tmp / STATE_FILE, state)
        except WriteError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if final.exists():  # a checkpoint of the same step from a run that crashed before pruning
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoint_dirs(out)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _out_of_space(e: BaseException) -> bool:
    """A full disk, however the writer reports it: OSError ENOSPC, torch's zip writer ("unexpected pos"),
    safetensors ("os error 28")."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return any(s in text for s in ("No space left", "os error 28", "unexpected pos", "ENOSPC"))


def _raise_if_full(e: Exception, what: str, folder: Path, intact: str) -> None:
    """After a failed write: a full disk (however the writer said so) becomes a one-line `WriteError`."""
    if _out_of_space(e):
        raise WriteError(f"{what} failed ({str(e).splitlines()[0][:120]}; {free_text(folder)}); {intact}: free "
                         f"some space, then rerun the same command") from e


def _raise_together(accelerator: Any, problem: str) -> None:
    """Raise `problem` (found by the main process) on every rank, so none waits at a barrier alone."""
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        problem = broadcast_object_list([problem])[0]
    if problem:
        raise WriteError(problem)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def checkpoint_bytes(accelerator: Any, output_dir: str | os.PathLike) -> int:
    """Expected size of the next checkpoint: the newest complete one, else this process's model and
    optimizer tensors (what `save_state` writes from them)."""
    done = checkpoint_dirs(output_dir)
    if done:
        return _folder_bytes(done[-1])
    import torch

    def tensor_bytes(tree: Any) -> int:
        if torch.is_tensor(tree):
            return tree.numel() * tree.element_size()
        if isinstance(tree, dict):
            return sum(tensor_bytes(v) for v in tree.values())
        if isinstance(tree, (list, tuple)):
            return sum(tensor_bytes(v) for v in tree)
        return 0

    # parameters and buffers, not state_dict(): under some sharding wrappers that is a collective,
    # and only the main process asks
    models = sum(tensor_bytes([*m.parameters(), *m.buffers()]) for m in getattr(accelerator, "_models", []))
    optimizers = sum(tensor_bytes(o.state_dict()) for o in getattr(accelerator, "_optimizers", []))
    return models + optimizers


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
        try:
            model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        except Exception as e:
            shutil.rmtree(tmp, ignore_errors=True)
            _raise_if_full(e, f"{out}: exporting the model", out.parent, "the checkpoints are intact")
            raise
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    accelerator.wait_for_everyone()
    return out


# Keys that do not change what is trained (the folder itself, memory / speed knobs computing the same maths, logging, where
# and how often to save): a rerun with other values resumes. Every other key is in the run's fingerprint.
FINGERPRINT_EXEMPT = ("output_dir", "progress_bar", "save_steps", "keep_checkpoints", "report_to", "resume", "export_dir",
                      "gradient_checkpointing", "logp_chunk_size", "attention_backend", "activation_checkpointing",
                      "checkpoint_every_k", "offload_activations", "compile_layers", "liger_kernels",
                      "mlp_tile_tokens")
OUTPUTS = ("checkpoint-*", ".tmp-checkpoint-*", "metrics.jsonl", "resolved_config.yaml", "logs", "final",
           ".tmp-final", "original_model", "tiny_records.jsonl")


def check_rerun(cfg: Config, main_process: bool) -> None:
    """Before anything is loaded or written: the output and export folders are writable, and a rerun
    into output_dir uses the settings and inputs of the run there (see longpo.fingerprint)."""
    export_dir = Path(cfg.export_dir) if cfg.export_dir else None

    def clear() -> None:
        remove(cfg.output_dir, OUTPUTS)
        if export_dir is not None:
            remove(export_dir.parent, [export_dir.name, f".tmp-{export_dir.name}"])

    inputs = {} if cfg.model == TINY else {"model": identity(cfg.model), "tokenizer": identity(cfg.tokenizer),
                                          "train_file": identity(cfg.train_file, None if is_released(cfg.train_file) else RECORD_SUFFIXES)}
    guard("train", cfg.output_dir, cfg, FINGERPRINT_EXEMPT, inputs, cfg.overwrite, clear, write=main_process)
    if main_process and export_dir is not None:  # found now, not after all the training
        check_writable(export_dir.parent, "export_dir's parent folder")
