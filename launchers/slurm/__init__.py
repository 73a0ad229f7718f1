"""SLURM jobs through submitit, with requeue: `xlsr launch slurm`, `xlsr launch status`, `xlsr shard --slurm`.

The modules, by where they run:

- login node: `submit` (resolve, validate and submit a training run), `status` (`xlsr launch
  status`), `arrays` (shard job arrays and their merge job), `sbatch` (resources to sbatch options,
  the script, the submission), `cli` (the flags and handlers that `xlsr/cli.py` mounts);
- inside a job: `job` (signal routing, the training task, the requeue decision; its docstring
  explains the stop protocol under SLURM) and `arrays.ShardTask`;
- both: `rundir` (the files of a run directory), `cluster` (sinfo/scontrol queries).
"""


def __getattr__(name: str) -> object:
    # Jobs submitted before the package split pickled `launchers.slurm.TrainTask`; a requeue unpickles it.
    if name == "TrainTask":
        from launchers.slurm.job import TrainTask

        return TrainTask
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
