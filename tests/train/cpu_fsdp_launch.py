"""`longpo` under FSDP2 on CPU processes, for tests: torchrun or `accelerate launch` runs this file.

    ACCELERATE_USE_FSDP=true FSDP_VERSION=2 torchrun --nproc_per_node=2 tests/train/cpu_fsdp_launch.py train ...
    accelerate launch --config_file longpo/recipes/accelerate/fsdp2.yaml --num_processes 2 --mixed_precision no \\
        tests/train/cpu_fsdp_launch.py train ...

accelerate 1.15 enables FSDP only on GPU-type devices: on a machine without one a launch gets no backend
and `DistributedType.NO`, and `longpo train` refuses it (`launch.check_distributed`). This shim changes
that one decision and nothing else: a distributed launch that accelerate would run as NO is run as a
multi-device launch over gloo on the CPU (`ACCELERATE_TORCH_DEVICE=cpu`), so accelerate's own FSDP2 path
(`fully_shard` per decoder layer, gradient reduce-scatter, DTensor clipping, state-dict gathering) runs
exactly as on GPUs. torch's FSDP2 itself supports CPU meshes over gloo.

With `fsdp_offload_params` accelerate builds `CPUOffloadPolicy()`, which pins host memory, and pinning needs
an accelerator: the shim makes the policy's default `pin_memory=False` (a subclass, so every isinstance
check still holds); offloading itself is unchanged.
"""

from __future__ import annotations

import os
import sys


def patch_accelerate_for_cpu_fsdp() -> None:
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    original = PartialState._prepare_backend

    def prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        backend, kind = original(self, cpu, sagemaker_dp, backend)
        if kind == DistributedType.NO and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return "gloo", DistributedType.MULTI_GPU
        return backend, kind

    PartialState._prepare_backend = prepare_backend
    os.environ["ACCELERATE_TORCH_DEVICE"] = "cpu"

    import dataclasses

    import torch.distributed.fsdp as fsdp

    @dataclasses.dataclass
    class UnpinnedCPUOffloadPolicy(fsdp.CPUOffloadPolicy):
        pin_memory: bool = False

    fsdp.CPUOffloadPolicy = UnpinnedCPUOffloadPolicy


if __name__ == "__main__":
    patch_accelerate_for_cpu_fsdp()
    from longpo.cli import main

    sys.exit(main(sys.argv[1:]))
