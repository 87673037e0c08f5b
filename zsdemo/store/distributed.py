"""Indexing on several processes, GPUs and nodes: `python -m zsdemo index` under `accelerate launch` or
`torchrun` (and the same code on one process, with no launcher).

    python -m zsdemo index PHOTOS --cache DIR                                        # one process
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 -m zsdemo index PHOTOS --cache DIR   # 2 CPU processes
    accelerate launch -m zsdemo index PHOTOS --cache DIR                             # GPUs / nodes

How a run goes (zsdemo.store.gallery holds the data structures):
  1. The main process takes the cache's build lock, compares the folders with the cache (plan_update) and
     writes the list of photos to encode as a run folder `DIR/build-<plan>/plan.json`, split in shards.
     It tells the other processes the folder (one broadcast), or that there is nothing to encode.
  2. Every process encodes its shards (shard i belongs to rank i % world): photos are decoded and
     thumbnailed by DataLoader workers, encoded in batches on the process's device (bf16 autocast on GPU
     unless told otherwise), and each finished shard is written at once (shard-<i>.npy + shard-<i>.json).
  3. After a barrier the main process merges the shards with the reused rows into one generation, builds
     the index and switches CURRENT last, still under the lock; the run folder is then removed.
A run killed at any point (kill -9 of any rank; torchrun then stops the others) leaves its finished
shards; starting it again, with any number of processes, encodes only the others. Several nodes need
the cache folder and the photos on a shared filesystem (the shards are files).

Accelerate 1.15 facts (checked on the development machines): `accelerate launch --cpu --num_processes 2` starts ONE
process; use `ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 ...` for two CPU ranks (gloo).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zsdemo.config import DEFAULT_BATCH_SIZE
from zsdemo.errors import ImageError
from zsdemo.store.layout import PhotoEncoder, ProgressFn, SkippedFile
from zsdemo.store.runs import EncodeRun, decode_pending
from zsdemo.threads import local_processes, set_cpu_threads

log = logging.getLogger(__name__)

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Processes:
    """This process's place in the run: rank, world size, device; collectives are no-ops on one process.
    Under a launcher (WORLD_SIZE > 1) the process group is set up by Accelerate's PartialState (gloo on
    CPU, NCCL on GPUs)."""

    def __init__(self, cpu: bool | None = None) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        use_cpu = cpu if cpu is not None else (os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
                                               or not torch.cuda.is_available())
        if self.world > 1:
            from accelerate import PartialState

            # a long timeout: ranks wait at the barrier while the slowest finishes its shards, and at the
            # broadcast while the main rank waits for another builder's lock
            state = PartialState(cpu=use_cpu, timeout=timedelta(hours=24))
            self.rank, self.world, self.device = state.process_index, state.num_processes, state.device
        else:
            self.rank = 0
            self.device = torch.device("cpu" if use_cpu else "cuda")
        if self.device.type == "cpu":  # ranks sharing the cores would otherwise each start one thread per core
            set_cpu_threads(local_processes(self.world))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, value: Any) -> Any:
        if self.world == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            with contextlib.suppress(Exception):
                torch.distributed.destroy_process_group()


class _ShardPhotos(torch.utils.data.Dataset):
    """The photos of some shards: decoded, thumbnailed and transformed in DataLoader workers."""

    def __init__(self, run: EncodeRun, shards: list[int], transform: Callable[[Any], torch.Tensor]) -> None:
        self.run = run
        self.indices = [s * run.shard_size + i for s in shards for i in range(len(run.shard_photos(s)))]
        self.transform = transform
        self.thumbs = run.dir.parent / "thumbs"

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        index = self.indices[i]
        decoded = decode_pending(self.run.photos[index], self.thumbs)
        if isinstance(decoded, SkippedFile):
            return index, decoded
        image, entry = decoded
        try:  # the encoder's transform raises ImageError for a photo it cannot resize: skipped like unreadable ones
            return index, (self.transform(image), entry)
        except ImageError as exc:
            return index, SkippedFile(entry.path, str(exc), entry.size, entry.mtime_ns)


def _as_is(sample: Any) -> Any:
    return sample


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' is bf16 autocast on a GPU and fp32 on a CPU (bf16 without native support is several times slower there)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("fp32", *AUTOCAST):
        raise ValueError(f"unknown indexing precision {precision!r}: use auto, fp32, bf16 or fp16")
    return precision


def encode_shards(run: EncodeRun, encoder: Any, procs: Processes, workers: int = 1, batch_size: int = DEFAULT_BATCH_SIZE,
                  precision: str = "fp32", progress: ProgressFn | None = None) -> int:
    """Encode this process's unfinished shards of `run`; returns the number of photos it encoded."""
    shards = run.todo(procs.rank, procs.world)
    dataset = _ShardPhotos(run, shards, encoder.transform)
    if not len(dataset):
        return 0
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                                         collate_fn=_as_is, prefetch_factor=4 if workers else None,
                                         persistent_workers=False)
    precision = resolve_precision(precision, procs.device)
    device = procs.device

    @torch.inference_mode()
    def encode_batch(tensors: list[torch.Tensor]) -> np.ndarray:
        images = torch.stack(tensors).to(device, non_blocking=True)
        context = (torch.autocast(device.type, dtype=AUTOCAST[precision]) if precision in AUTOCAST
                   else contextlib.nullcontext())
        with context:
            vectors = encoder.encode_tensor(images, "photo", "fp32")
        vectors = vectors.float()
        return torch.nn.functional.normalize(vectors, dim=-1).cpu().numpy()

    def items() -> Iterator[tuple[int, Any]]:
        yield from loader

    run.encode(items(), encode_batch, batch_size, rank=procs.rank, progress=progress, total=len(dataset))
    return len(dataset)


class DistributedRunner:
    """The main rank's runner for build_gallery: announces the run to the other ranks, encodes its own
    shards, waits for theirs. `announced` tells whether the other ranks were told anything yet."""

    def __init__(self, procs: Processes, workers: int, batch_size: int, precision: str) -> None:
        self.procs, self.workers, self.batch_size, self.precision = procs, workers, batch_size, precision
        self.announced = False
        self.photos_per_s: float | None = None
        self.encoded = 0

    def __call__(self, run: EncodeRun, encoder: PhotoEncoder, progress: ProgressFn | None) -> None:
        before = len(run.encoded_log())
        started = time.perf_counter()
        self.announce(str(run.dir))
        encode_shards(run, encoder, self.procs, self.workers, self.batch_size, self.precision, progress)
        self.procs.barrier()  # every rank has written its shards
        seconds = time.perf_counter() - started
        self.encoded = sum(int(line.split()[-1]) for line in run.encoded_log()[before:])
        self.photos_per_s = self.encoded / seconds if seconds > 0 else None
        log.info("encoding: %d photos in %.1f s on %d process(es): %.2f photos/s", self.encoded, seconds,
                 self.procs.world, self.photos_per_s or 0.0)

    def announce(self, run_dir: str | None) -> None:
        if not self.announced:
            self.announced = True
            self.procs.broadcast(run_dir)


def follow(procs: Processes, encoder: Any, workers: int, batch_size: int, precision: str) -> int:
    """What a non-main rank does: wait for the main rank's run folder (None: nothing to encode), encode its
    shards, meet the others at the barrier. Returns the number of photos it encoded."""
    run_dir = procs.broadcast(None)
    if run_dir is None:
        return 0
    run = EncodeRun.load(Path(run_dir))
    count = encode_shards(run, encoder, procs, workers, batch_size, precision)
    procs.barrier()
    return count
