"""`xlsr.train(cfg)`: one training process, from joining the process group to a clean exit."""

from __future__ import annotations

import logging

from xlsr.config import TrainConfig, validate
from xlsr.data.sources import check_data_sources
from xlsr.engine.distributed import DistEnv, any_rank_host, init_distributed, shutdown
from xlsr.engine.reporting import TrainResult
from xlsr.engine.run_lock import RunDirLock, RunDirLockedError
from xlsr.engine.trainer import Trainer
from xlsr.process import StopRequest

log = logging.getLogger("xlsr.train")


def train(cfg: TrainConfig, env: DistEnv | None = None, stop: StopRequest | None = None) -> TrainResult:
    """Train this process's rank of the job described by RANK / WORLD_SIZE / LOCAL_RANK /
    MASTER_ADDR / MASTER_PORT (world size 1 without them).

    Stop signals are taken over first. With ``env`` given, the caller owns the process group;
    otherwise it is created here and destroyed on the way out, whatever happens.
    """
    validate(cfg, "<TrainConfig>")  # a config built in Python has not been through load_config
    check_data_sources(cfg.data)  # an empty or overlapping data.train: one line, before any group starts
    if stop is None:
        stop = StopRequest()
        stop.install()
    own_group = env is None
    env = env or init_distributed(cfg.distributed.timeout_s)
    if not env.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    lock = None
    try:
        lock = lock_run_dir(cfg, env)
        log.info("training %s on %d rank(s), device %s", cfg.run_dir, env.world_size, env.device)
        return Trainer(cfg, env, stop).fit()
    finally:
        if lock is not None:
            lock.release()
        if own_group:
            shutdown()


def lock_run_dir(cfg: TrainConfig, env: DistEnv) -> RunDirLock | None:
    """Rank 0 takes the run directory's lock before anything touches it; every rank learns whether
    it got it, so a refused job ends on all ranks at once with rank 0's one-line reason."""
    lock, refusal = None, None
    if env.is_main:
        try:
            lock = RunDirLock(cfg.run_dir).acquire()
        except RunDirLockedError as exc:
            refusal = exc
        except OSError as exc:  # e.g. run_dir is a file, or not writable
            refusal = RunDirLockedError(f"run_dir={cfg.run_dir} is unusable: {exc.strerror}: {exc.filename}")
    if any_rank_host(refusal is not None, env):
        raise refusal or RunDirLockedError(f"{cfg.run_dir} is in use by another job (rank 0 says which)")
    return lock
