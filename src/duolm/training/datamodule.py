"""LightningDataModule over a token store's blocks (memory-mapped), with the resumable sampler."""
from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from duolm.data.pipeline import Split
from duolm.data.sampler import ResumableSampler


class BlockDataset(Dataset):
    def __init__(self, split: Split):
        self.split = split

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i) -> dict:
        """{'ids', 'valid'}, with 'label' for an image and 'clean' (the prompt) for an instruction record."""
        if getattr(self.split, "has_prompts", False):
            ids, valid, clean = self.split.blocks_with_prompts(i, i + 1)
            return {"ids": ids[0], "valid": valid[0], "clean": clean[0]}
        ids, valid, *label = self.split.block(i)  # read from the memory-mapped store
        return {"ids": ids, "valid": valid, **({"label": label[0]} if label else {})}


def stream_batch(items) -> dict:
    """A streamed batch of (ids, valid) blocks as the dict every block batch is."""
    ids, valid = default_collate(items)
    return {"ids": ids, "valid": valid}


class BlockDataModule(pl.LightningDataModule):
    def __init__(self, train: Split, valid: Split, *, batch_size: int, eval_batch_size: int,
                 global_batch_size: int, seed: int = 0, num_workers: int = 0, prefetch_factor: int = 2,
                 pin_memory: bool = False):
        super().__init__()
        self.prefetch_factor, self.pin_memory = prefetch_factor, pin_memory
        self.train, self.valid = train, valid
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.global_batch_size, self.seed, self.num_workers = global_batch_size, seed, num_workers
        self.sampler = None
        self.stream, self.stream_start_step = None, 0
        self.resume_positions = None  # set from a checkpoint: every rank's stream position

    def train_dataloader(self):
        tr = self.trainer
        rank, world = (tr.global_rank, tr.world_size) if tr is not None else (0, 1)
        if hasattr(self.train, "blocks_for"):  # streaming: one rank's share of the stream, from its saved position
            start = tuple(self.resume_positions[rank]) if self.resume_positions else (0, 0, 0)
            self.stream = self.train.blocks_for(rank, world, start)
            self.stream_start_step = tr.global_step if tr is not None else 0
            # in this process, so the positions it records are the trainer's; data.num_proc tokenizes in parallel
            return DataLoader(self.stream, batch_size=self.batch_size, num_workers=0, pin_memory=self.pin_memory,
                              collate_fn=stream_batch)
        self.sampler = ResumableSampler(len(self.train), seed=self.seed, rank=rank, world_size=world)
        # the loop state (global_step) is restored before the loaders are built, so a resumed
        # run starts exactly after the last example of its last optimizer step
        self.sampler.start = (tr.global_step if tr is not None else 0) * self.global_batch_size
        workers = dict(num_workers=self.num_workers, persistent_workers=True,
                       prefetch_factor=self.prefetch_factor) if self.num_workers > 0 else {}
        return DataLoader(BlockDataset(self.train), batch_size=self.batch_size, sampler=self.sampler, drop_last=True,
                          pin_memory=self.pin_memory, **workers)

    def stream_position(self, global_step: int):
        """This rank's stream position after `global_step` optimizer steps (None when not streaming)."""
        if self.stream is None:
            return None
        accum = self.trainer.accumulate_grad_batches if self.trainer is not None else 1
        return tuple(self.stream.position((global_step - self.stream_start_step) * accum * self.batch_size))

    def val_dataloader(self):
        tr = self.trainer
        rank, world = (tr.global_rank, tr.world_size) if tr is not None else (0, 1)
        idx = list(range(rank, len(self.valid), world))
        sub = torch.utils.data.Subset(BlockDataset(self.valid), idx)
        return DataLoader(sub, batch_size=self.eval_batch_size, shuffle=False, num_workers=0, pin_memory=self.pin_memory)


class PromptDataModule(pl.LightningDataModule):
    """Batches of prompt indices for reinforcement learning (duolm.training.grpo_module): each rank
    `per_device` training prompts per RL step from a resumable shuffle (a resumed run continues
    after the last prompt of its last step), and every held-out prompt once per validation."""

    def __init__(self, num_train: int, num_valid: int, *, per_device: int, iterations: int = 1, seed: int = 0,
                 eval_batch_size: int = 32):
        super().__init__()
        self.num_train, self.num_valid, self.per_device = num_train, num_valid, per_device
        self.iterations, self.seed, self.eval_batch_size = iterations, seed, eval_batch_size

    def train_dataloader(self):
        tr = self.trainer
        rank, world = (tr.global_rank, tr.world_size) if tr is not None else (0, 1)
        sampler = ResumableSampler(self.num_train, seed=self.seed, rank=rank, world_size=world)
        rl_step = (tr.global_step if tr is not None else 0) // self.iterations
        sampler.start = rl_step * self.per_device * world
        return DataLoader(range(self.num_train), batch_size=self.per_device, sampler=sampler, drop_last=True)

    def val_dataloader(self):
        tr = self.trainer
        rank, world = (tr.global_rank, tr.world_size) if tr is not None else (0, 1)
        return DataLoader(list(range(rank, self.num_valid, world)), batch_size=self.eval_batch_size, shuffle=False)
