"""Batches of rows of like length, seeded so that a resumed run and N ranks see the batches one uninterrupted
process saw. SFT and DPO share it: padding to the longest row of a random batch wastes compute where short and long
rows are mixed (short safety prompts beside long bias contexts)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """transformers' sampler draws its permutation from the global RNG when it is iterated, whose state a resumed run
    does not share: this one seeds its own generator with the seed and the epoch the Trainer's state is in when the
    epoch's batches are drawn (`set_epoch` does not reach a sampler nested in accelerate's shard and skip wrappers),
    so a run resumed mid-epoch, on one rank or several, sees the batches an uninterrupted one saw."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int, epoch: Callable[[], int]) -> None:
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.epoch = seed, epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch())
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


def length_grouped(trainer: Trainer, lengths: list[int]) -> SeededLengthGroupedSampler:
    """The sampler for `trainer`'s training rows of these lengths (random megabatches of 50 batches, sorted by length
    within). Grouped by the global batch: each rank takes its share of consecutive indices, so one process and N
    ranks with the same global batch see the same rows at every step."""
    a = trainer.args
    seed = a.data_seed if a.data_seed is not None else a.seed
    batch = a.train_batch_size * a.gradient_accumulation_steps * max(1, a.world_size)
    return SeededLengthGroupedSampler(batch, lengths, seed=seed, epoch=lambda: int(trainer.state.epoch + 1e-6))
