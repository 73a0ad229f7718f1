"""pytest plugin of the SLURM tests: the session's two-node cluster.

Test modules load it with ``pytest_plugins = ["slurm_fixtures"]`` (and must not import it), so the
cluster (tests/slurm_cluster.py) starts once, for whichever module needs it first, and stops at the
end of the session.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from slurm_cluster import ClusterError, LocalSlurmCluster, missing_requirements


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> Iterator[LocalSlurmCluster]:
    problem = missing_requirements()
    if problem:
        pytest.fail(problem, pytrace=False)
    cluster = LocalSlurmCluster(tmp_path_factory.mktemp("slurm"), nodes=2)
    try:
        cluster.start()
    except ClusterError as exc:
        pytest.fail(f"could not start the local SLURM cluster: {exc}", pytrace=False)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def env(slurm) -> dict[str, str]:
    """Environment for commands that talk to the cluster (`xlsr launch slurm`, sbatch, scontrol)."""
    return {**slurm.env, "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
