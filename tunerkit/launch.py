"""Start one process per GPU through torchrun when a recipe asks for more than one GPU.

``tunerkit run`` calls :func:`relaunch_if_needed` before any row runs. Outside a distributed
launch it runs the very same command line again under ``torchrun --nproc_per_node=N`` (the
launcher PyTorch ships; ``accelerate launch`` sets the same variables and works as well) and
exits with torchrun's return code. Inside a launch it only checks that the launcher started as
many processes as the recipe asks for. Multi-node runs are launched by hand with the same
launchers (docs/multi-gpu.md); tunerkit then finds WORLD_SIZE set and does not relaunch.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tunerkit.errors import UserError

#: Set by torchrun, accelerate launch, deepspeed and mpirun wrappers alike.
LAUNCH_VARIABLES = ("WORLD_SIZE", "LOCAL_RANK")


def inside_launch(env=None) -> bool:
    env = os.environ if env is None else env
    return any(name in env for name in LAUNCH_VARIABLES)


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def torchrun_command(gpus: int, argv: list[str]) -> list[str]:
    """The command that runs ``argv`` (this process's command line, program name first) on ``gpus`` processes."""
    # `python -m torch.distributed.run` is torchrun run by this very interpreter (same venv,
    # same PYTHONPATH); `-m tunerkit.cli` is what the `tunerkit` script runs. --standalone
    # picks a free rendezvous port on this host, so two runs side by side do not collide.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
            "-m", "tunerkit.cli", *argv[1:]]


def relaunch_if_needed(gpus: int, argv: list[str] | None = None) -> None:
    """Make sure ``gpus`` processes run this command: relaunch under torchrun (and exit), or check and return."""
    if gpus <= 1:
        return
    if inside_launch():
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world != gpus:
            raise UserError(f"the recipe asks for {gpus} GPUs but the launcher started {world} processes",
                            key="gpus",
                            hint=f"launch with --nproc_per_node={gpus} (times nodes), or set gpus = {world}")
        return
    have = visible_gpus()
    if have < gpus:
        raise UserError(f"the recipe asks for {gpus} GPUs but {have} {'is' if have == 1 else 'are'} visible",
                        key="gpus", hint="lower gpus in the recipe or profile, or check CUDA_VISIBLE_DEVICES")
    command = torchrun_command(gpus, list(sys.argv if argv is None else argv))
    print(f"tunerkit: {gpus} GPUs: relaunching under torchrun: {' '.join(command[1:])}", flush=True)
    sys.exit(subprocess.call(command))
