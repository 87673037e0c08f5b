"""train/fit.py with a simulated crash: exit hard (no clean-up, status 3) right after the checkpoint at a step.

    python tests/train_crash.py --crash-after-step N --config ... [overrides]     (also under torchrun)

The test injects the failure here, so fit.py carries no test hook: fit.save_checkpoint is wrapped, then
fit.main runs with the remaining arguments.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_helpers import CRASH_EXIT  # noqa: E402  (this folder is on sys.path when run as a script)

from train import fit  # noqa: E402


def main(argv: list[str]) -> None:
    i = argv.index("--crash-after-step")
    crash_after = int(argv[i + 1])
    del argv[i:i + 2]
    save = fit.save_checkpoint

    def save_then_crash(run: fit.Run, step: int) -> None:
        save(run, step)
        if step >= crash_after:
            logging.getLogger("train.fit").warning("crash after step %d: exiting hard now (simulated crash)", step)
            logging.shutdown()
            os._exit(CRASH_EXIT)

    fit.save_checkpoint = save_then_crash
    fit.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
