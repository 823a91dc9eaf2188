"""``python -m distill.run [options]``: train or load the teacher, distill the student, evaluate, report.

With no options it distills tiny_resnet (T=4, rate-based training, the block-wise method) on the embedded digits, on
the CPU, in under a minute, and prints a table. ``--help`` lists every option; ``--config FILE.toml`` reads them
from a file. Several processes or GPUs: ``torchrun --nproc_per_node=N -m distill.run ...``.
"""

from __future__ import annotations

import signal
import sys

from distill.checkpoint import CheckpointError
from distill.config import parse_config
from distill.datasets import DatasetError
from distill.report import format_table, summary_rows
from distill.run_folder import RunFolderError
from distill.signals import Interrupted
from distill.trainer import NonFiniteLossError, SetupError, train

# What a run refuses or stops on with a message naming the cause (bad data, checkpoint or run folder, a diverged loss,
# a full disk): said as one line, never a traceback. OSError's message names the file.
RUN_ERRORS = (DatasetError, CheckpointError, NonFiniteLossError, SetupError, RunFolderError, OSError)


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(argv)
    try:
        results = train(cfg)
    except Interrupted as stop:  # SIGINT / SIGTERM: a checkpoint was written at the step it arrived
        print(stop, file=sys.stderr)
        raise SystemExit(128 + stop.signum) from None
    except KeyboardInterrupt:  # outside the training steps, or a second Ctrl-C
        print(f"interrupted; the run folder {cfg.run_dir} keeps its last checkpoint (--resume)", file=sys.stderr)
        raise SystemExit(128 + signal.SIGINT) from None
    except RUN_ERRORS as error:
        raise SystemExit(f"error: {error}") from error
    if "config" in results:  # rank 0
        print(format_table(summary_rows(results)))
        print(f"run folder: {results['run_dir']} (report.md, metrics.jsonl, student.pt)")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
