"""One rank of an engine test job: the real trainer, fed a fixed global batch per update.

Update ``u`` consumes global micro-batches ``[u·G, (u+1)·G)`` with ``G = world_size × update_freq``;
rank ``r`` takes ``r·update_freq …`` of them. Masks are seeded by the global micro-batch index, so
one process with update_freq 2 and two processes with update_freq 1 see exactly the same problem.

    python tests/engine_worker.py BATCHES.pt [--nan-at 3,4] [--fail-rank 1 --fail-at 2]
        [--dump-params FILE] -- --config configs/tiny.yaml key=value ...
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from xlsr.config import for_world_size, load_config
from xlsr.data.source import FixedSource
from xlsr.data.stages import Batch
from xlsr.engine.distributed import init_distributed, shutdown
from xlsr.engine.trainer import Trainer
from xlsr.process import StopRequest


class FixedBatches(FixedSource):
    """Pre-collated batches, global micro-batch ``u·G + r·update_freq + m`` for rank r at update u."""

    def __init__(
        self, path: str, rank: int, world: int, update_freq: int, nan_at: set[int], fail_at: int | None
    ):
        super().__init__()
        self.batches = torch.load(path, weights_only=True)
        self.rank, self.world, self.update_freq = rank, world, update_freq
        self.nan_at, self.fail_at = nan_at, fail_at

    def batch(self, consumed: int) -> Batch:
        update, micro = divmod(consumed, self.update_freq)
        if self.fail_at is not None and update == self.fail_at:
            raise RuntimeError(f"injected failure on rank {self.rank} at update {update}")
        index = update * self.world * self.update_freq + self.rank * self.update_freq + micro
        stored = self.batches[index % len(self.batches)]
        source = stored["source"].clone()
        if update in self.nan_at:
            source.fill_(float("nan"))
        mask = stored["padding_mask"]
        return Batch(source=source, padding_mask=mask, num_samples=int(stored["num_samples"]))

    def reseed(self, updates_done: int, reason: str) -> None:
        self.consumed = updates_done * self.update_freq


class DumpingTrainer(Trainer):
    """Saves the full (unsharded) weights right after restoring, for resharding tests."""

    dump_path: str | None = None

    def restore(self) -> None:
        super().restore()
        if self.dump_path is None:
            return
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(self.backend.module, options=options)
        if self.env.is_main:
            torch.save({name: tensor.clone() for name, tensor in state.items()}, self.dump_path)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    own, _, train = " ".join(sys.argv[1:]).partition(" -- ")
    parser = argparse.ArgumentParser()
    parser.add_argument("batches")
    parser.add_argument("--nan-at", default="")
    parser.add_argument("--fail-rank", type=int, default=-1)
    parser.add_argument("--fail-at", type=int, default=None)
    parser.add_argument("--dump-params", default=None)
    args = parser.parse_args(own.split())
    train_parser = argparse.ArgumentParser()
    train_parser.add_argument("--config", required=True)
    train_parser.add_argument("overrides", nargs="*")
    train_args = train_parser.parse_args(train.split())
    cfg = load_config(train_args.config, train_args.overrides)
    stop = StopRequest()
    stop.install()
    env = init_distributed(cfg.distributed.timeout_s)
    nan_at = {int(u) for u in args.nan_at.split(",") if u}
    fail_at = args.fail_at if env.rank == args.fail_rank else None
    update_freq = for_world_size(cfg, env.world_size).optim.update_freq  # as the trainer derives it
    data = FixedBatches(args.batches, env.rank, env.world_size, update_freq, nan_at, fail_at)
    DumpingTrainer.dump_path = args.dump_params
    try:
        result = DumpingTrainer(cfg, env, stop, data=data).fit()
    finally:
        shutdown()
    return result.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
