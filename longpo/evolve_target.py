"""One key per evolve iteration for the context length it extends to, `target_length`, and one for its
RoPE base, `rope_theta`; the stage keys that follow from them. Imports neither torch nor transformers
(`longpo.evolve_config` expands every iteration when its config is read, before the stages load).

With T = target_length and R = rope_theta, a key the iteration's stage leaves unset becomes:

    generate.rope_theta, train.rope_theta                   R (generate: when its backend takes a RoPE override)
    generate.max_position_embeddings                        T (idem)
    train.max_position_embeddings, train.max_length         T
    generate.min_doc_tokens, generate.max_doc_tokens        T // 2, T
    generate.backend_args.<length_arg>                      T (the engine's context, vLLM's max_model_len)
    generate.short_backend_args.<length_arg>                the previous iteration's train.max_position_embeddings:
                                                            the short phase runs the model as it is, which holds that
    eval.ruler.lengths                                      4096, 8192, ... below T, then T (when RULER is on)

R is not computed from T: the project's RoPE function (`longpo.models.rope_overrides`) applies a chosen
base per rope type, and the paper's choice (1e7 for 128K, 256K and 512K alike) is no function of the
length. A key set in the stage wins; one that contradicts the target is refused (`check_set`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from longpo.backends import DEFAULT_BACKEND, backend_spec
from longpo.config import set_dotted

RULER_START = 4096  # RULER's shortest standard length
BEYOND_TARGET = ("train.max_length", "generate.min_doc_tokens", "generate.max_doc_tokens")  # may exceed T, when listed
AT_LEAST_TARGET = ("generate.max_position_embeddings", "train.max_position_embeddings")  # must hold T


@dataclass(frozen=True)
class Mark:
    """One target-dependent key of an iteration's stage: its value and whether the user set it."""

    key: str  # "train.max_length", "generate.backend_args.max_model_len"
    value: Any
    how: str  # "derived", "set", "set, beyond target"

    def line(self) -> str:
        value = "null" if self.value is None else self.value  # as the YAML reads: no override, the model's own
        return f"{self.key.partition('.')[2]}={value} ({self.how})"


def ruler_lengths(target: int) -> list[int]:
    """The RULER ladder up to the target: 4096, 8192, ... below it, then the target itself."""
    lengths, n = [], RULER_START
    while n < target:
        lengths.append(n)
        n *= 2
    return [*lengths, target]


def _get(stages: dict, key: str) -> tuple[bool, Any]:
    node: Any = stages
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _given_or(stages: dict, key: str, default: Any) -> Any:
    given, value = _get(stages, key)
    return value if given else default


def derived_keys(stages: dict, target: int | None, rope_theta: float | None, previous: int | None) -> dict[str, Any]:
    """Every key the iteration's target and RoPE base give, from its stage dicts as the user wrote them."""
    spec = backend_spec(stages["generate"].get("backend", DEFAULT_BACKEND))
    out: dict[str, Any] = {}
    if rope_theta is not None:
        if spec.rope_override:
            out["generate.rope_theta"] = float(rope_theta)
        out["train.rope_theta"] = float(rope_theta)
    if target is None:
        return out
    if spec.rope_override:
        out["generate.max_position_embeddings"] = target
    out.update({"generate.min_doc_tokens": target // 2, "generate.max_doc_tokens": target})
    if spec.length_arg:
        out[f"generate.backend_args.{spec.length_arg}"] = target
        two_models = any(_given_or(stages, k, out.get(k)) is not None  # an override: a short phase as well
                         for k in ("generate.rope_theta", "generate.max_position_embeddings"))
        if previous is not None and two_models and stages["generate"].get("original_for_short_steps", True):
            out[f"generate.short_backend_args.{spec.length_arg}"] = previous
    out.update({"train.max_position_embeddings": target, "train.max_length": target})
    if _get(stages, "eval.ruler.enabled")[1] is not False:
        out["eval.ruler.lengths"] = ruler_lengths(target)
    return out


def check_set(name: str, key: str, value: Any, derived: Any, target: int | None, rope_theta: float | None,
              beyond: list[str]) -> str:
    """How a key the user set stands against what the iteration derives ("set" or "set, beyond target");
    a contradiction is refused in one line naming the iteration, the key and what to do."""
    where = f"iteration {name}: {key}={value}"
    if key.endswith("rope_theta") and value != derived:
        if key == "generate.rope_theta" and value is None:
            return "set"  # the opt-out: the model as it is writes the long answers
        raise ValueError(f"{where} but the iteration's rope_theta={rope_theta}; set the base once, as the iteration's "
                         f"rope_theta (generate.rope_theta: null runs the generator with the model's own RoPE)")
    if value is None or target is None or not isinstance(value, int):
        return "set"
    if (key in AT_LEAST_TARGET or key.startswith("generate.backend_args.")) and value < target:
        raise ValueError(f"{where} is below target_length={target}: the model would not hold the target; "
                         f"raise {key} or lower target_length")
    if key in BEYOND_TARGET and value > target:
        if key not in beyond:
            raise ValueError(f"{where} is above target_length={target}; lower it, raise target_length, or list "
                             f"{key} in the iteration's beyond_target")
        return "set, beyond target"
    return "set"


def expand(name: str, stages: dict[str, dict], target: int | None, rope_theta: float | None,
           beyond: list[str], previous: int | None) -> tuple[dict[str, dict], list[Mark]]:
    """The stage dicts with every derived key filled in where the user left it unset, and one mark per
    target-dependent key (derived or set). `previous`: the max positions of the model the iteration
    starts from, when the previous iteration gave them."""
    if target is not None and target < 64:
        raise ValueError(f"iteration {name}: target_length={target} must be a token count >= 64")
    if rope_theta is not None and rope_theta <= 0:
        raise ValueError(f"iteration {name}: rope_theta={rope_theta} must be positive")
    unknown = sorted(set(beyond) - set(BEYOND_TARGET))
    if unknown or (beyond and target is None):
        raise ValueError(f"iteration {name}: beyond_target={beyond}: it takes keys of {list(BEYOND_TARGET)} and "
                         f"needs target_length")
    out = copy.deepcopy(stages)
    marks = []
    for key, value in derived_keys(stages, target, rope_theta, previous).items():
        given, set_value = _get(stages, key)
        if given:
            marks.append(Mark(key, set_value, check_set(name, key, set_value, value, target, rope_theta, beyond)))
        else:
            set_dotted(out, key, value)
            marks.append(Mark(key, value, "derived"))
    return out, marks
