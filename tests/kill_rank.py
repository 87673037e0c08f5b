"""`python -m zsdemo` with one rank killed by SIGKILL after writing N shards: a real kill -9 in the middle of a
distributed build. Run under torchrun as a script: `kill_rank.py RANK:N index ARGS...`."""

from __future__ import annotations

import os
import signal
import sys

from zsdemo.cli import main
from zsdemo.store.runs import EncodeRun

if __name__ == "__main__":
    who, after = (int(part) for part in sys.argv.pop(1).split(":"))
    if int(os.environ.get("RANK", "0")) == who:
        original, written = EncodeRun.write_shard, [0]

        def write_then_die(self: EncodeRun, *args: object, **kwargs: object) -> None:
            original(self, *args, **kwargs)
            written[0] += 1
            if written[0] >= after:
                os.kill(os.getpid(), signal.SIGKILL)

        EncodeRun.write_shard = write_then_die  # type: ignore[method-assign]
    sys.exit(main(sys.argv[1:]))
