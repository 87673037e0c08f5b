"""Deterministic training batch samplers.

A sampler draws each epoch's plan (which sketch, positive, negative, permutations and augmentation seed)
from (seed, epoch) only, so a resumed run sees exactly the batches an uninterrupted run would, whatever
the number of data-loader workers.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from train.splits import DataError, Part
from train.transforms import draw_permutation


class _EpochBatchSampler:
    """Base: a list of batches (lists of item tuples) drawn from (seed, epoch). Use set_epoch before iterating."""

    def __init__(self, part: Part, batch_size: int, seed: int) -> None:
        self.part, self.batch_size, self.seed, self.epoch = part, batch_size, seed, 0
        self.photos_by_class = part.photos_by_class()
        self.n_batches = len(part.sketches) // batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rng(self) -> random.Random:
        return random.Random(self.seed * 1_000_003 + self.epoch)

    def __len__(self) -> int:
        return self.n_batches

    def plan(self) -> list[list[tuple]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[tuple]]:
        yield from self.plan()


class CategoryBatchSampler(_EpochBatchSampler):
    """Shuffled seen sketches; each with a random same-class positive and a random other-class negative photo.

    Items: (sketch, positive photo, negative photo, augmentation seed).
    """

    def plan(self) -> list[list[tuple]]:
        rng = self.rng()
        order = list(range(len(self.part.sketches)))
        rng.shuffle(order)
        n_classes = len(self.part.classes)
        batches = []
        for b in range(self.n_batches):
            batch = []
            for s in order[b * self.batch_size:(b + 1) * self.batch_size]:
                label = self.part.sketch_labels[s]
                pos = rng.choice(self.photos_by_class[label])
                other = rng.randrange(n_classes - 1)
                other += other >= label
                neg = rng.choice(self.photos_by_class[other])
                batch.append((s, pos, neg, rng.getrandbits(31)))
            batches.append(batch)
        return batches


class FineGrainedBatchSampler(_EpochBatchSampler):
    """P classes x Q sketches per batch, in P contiguous blocks of Q (the layout L_delta expects).

    Items: (sketch, its paired photo, another photo of the same class, augmentation seed, perm1, perm2).
    """

    def __init__(self, part: Part, p_classes: int, q_instances: int, seed: int, grid: int = 2) -> None:
        super().__init__(part, p_classes * q_instances, seed)
        self.p, self.q, self.grid = p_classes, q_instances, grid
        sketches_by_class = part.sketches_by_class()
        self.classes = [c for c, s in enumerate(sketches_by_class) if len(s) >= q_instances and len(self.photos_by_class[c]) >= 2]
        if len(self.classes) < p_classes:
            raise DataError(f"Need {p_classes} classes with >= {q_instances} sketches and >= 2 photos; have {len(self.classes)}.")
        self.sketches_by_class = sketches_by_class

    def plan(self) -> list[list[tuple]]:
        rng = self.rng()
        batches = []
        for _ in range(self.n_batches):
            batch = []
            for c in rng.sample(self.classes, self.p):
                for s in rng.sample(self.sketches_by_class[c], self.q):
                    pos = self.part.sketch_pairs[s]
                    neg = rng.choice([p for p in self.photos_by_class[c] if p != pos])
                    perm1 = draw_permutation(rng, self.grid)
                    perm2 = draw_permutation(rng, self.grid, exclude=perm1)
                    batch.append((s, pos, neg, rng.getrandbits(31), perm1, perm2))
            batches.append(batch)
        return batches
