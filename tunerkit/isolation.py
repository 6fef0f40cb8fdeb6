"""One row in a process of its own.

Rows that share a process share what the process keeps between them: on one H100 a row's
7.7B-parameter model stayed allocated into the next row (14.4 GiB) after GPT-QModel was
imported mid-row (PEFT probes it when it builds LoRA layers), and rows after a compiled row
ran beside the compiled code's caches. The next row's peak then carries the earlier row's
memory, and its speed the earlier row's warm caches (cuDNN plans, inductor kernels). A
fresh process per row gives every row the same start, whatever ran before it.

The parent keeps everything the user sees: the store, the one-line reasons, resume and
claims. The child trains and evaluates the row and sends back its metrics and environment,
or the reason it failed (classified there, where the exception is). A child that dies
without a word (killed by the host's out-of-memory killer, a crashed kernel) is a failed
row with its exit status, not a crashed run.

``spawn``, not ``fork``: a CUDA context does not survive a fork, and a forked child would
inherit whatever the parent imported and allocated.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import traceback
from pathlib import Path

from tunerkit.errors import RowFailed


def wanted(setting: str, cuda: bool | None = None) -> bool:
    """Whether a row with ``isolation = setting`` trains in a process of its own. ``auto``:
    on a CUDA device (``cuda``: whether the row runs on one; default: whether this machine has
    one) in a single-process run (a torchrun/DeepSpeed rank is already a process per row's
    share, and its peers expect it to stay in their group)."""
    if setting == "process":
        return int(os.environ.get("WORLD_SIZE", "1")) == 1
    if setting == "none":
        return False
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    return cuda and int(os.environ.get("WORLD_SIZE", "1")) == 1


class ChildFailed(Exception):
    """The row failed in its process; ``status``/``reason`` as the runner records them."""

    def __init__(self, status: str, reason: str, needs: str | None, environment: dict):
        super().__init__(reason)
        self.status, self.reason, self.needs, self.environment = status, reason, needs, environment


def run_in_process(row, out_dir: Path, progress: bool, target=None) -> tuple[dict, dict]:
    """Train ``row`` in a fresh process; return its (metrics, environment) or raise
    :class:`ChildFailed` (the row failed there) or :class:`RowFailed` (the process died).
    ``target`` stands in for the child's body in tests."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target or _child, args=(row, str(out_dir), progress, send), name=f"tunerkit-row-{row.name}")
    proc.start()
    send.close()  # the child holds the only sending end: its death reads as EOF here
    try:
        message = receive.recv()
    except EOFError:
        proc.join()
        raise RowFailed(f"the row's process ended without a result ({exit_status(proc.exitcode)})") from None
    finally:
        receive.close()
        _stop(proc)
    if message["status"] == "ok":
        return message["metrics"], message["environment"]
    raise ChildFailed(message["status"], message["reason"], message.get("needs"), message["environment"])


def exit_status(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        name = signal.Signals(-code).name
        hint = "; the host's out-of-memory killer sends it" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}"


def _stop(proc) -> None:
    """Wait for the child to leave (it exits once it has sent); end it if it does not
    (the parent was interrupted while the row trained)."""
    proc.join(timeout=60)
    if proc.is_alive():
        proc.terminate()
        proc.join(timeout=10)
    if proc.is_alive():
        proc.kill()
        proc.join()


def _child(row, out_dir: str, progress: bool, send) -> None:
    import torch

    from tunerkit.loop import run_row
    from tunerkit.metrics import environment
    from tunerkit.progress import EvaluationProgress, RowProgress
    from tunerkit.runner import classify_failure

    bar = RowProgress(row.name, enabled=progress)
    message: dict
    try:
        metrics = run_row(row, Path(out_dir), progress=bar, extra_plugins=[EvaluationProgress(bar)])
        message = {"status": "ok", "metrics": metrics}
    except Exception as err:  # noqa: BLE001 - the parent records it as the row's cell
        status, reason, needs, show_traceback = classify_failure(err)
        if show_traceback:
            traceback.print_exc()
        message = {"status": status, "reason": reason, "needs": needs}
    finally:
        bar.close()
    message["environment"] = environment(torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    send.send(message)
    send.close()
