"""The teacher cache's shards on a dask.distributed cluster (``--scheduler``): each worker's
own :class:`~pipeline.teacher.resources.ShardResources`, given by a worker plugin the
coordinator registers, and the task that runs a shard with them. Imported only when a
scheduler is asked for: ``distributed`` costs a third of a second to import.
"""

from __future__ import annotations

from distributed import WorkerPlugin, get_worker

from pipeline.teacher.resources import ShardResources
from pipeline.teacher.shard import ShardJob, ShardStats, run_shard

PLUGIN_NAME = "hoi-shard-resources"


class ShardResourcesPlugin(WorkerPlugin):
    """Gives each dask.distributed worker its own :class:`ShardResources`, closed with the
    worker. Registered once per cluster (idempotent): later runs reuse the loaded teachers."""

    idempotent = True

    def __init__(self):
        self.by_worker: dict[str, ShardResources] = {}  # workers in one process may share the plugin

    def setup(self, worker) -> None:
        self.by_worker[worker.address] = ShardResources()

    def teardown(self, worker) -> None:
        res = self.by_worker.pop(worker.address, None)
        if res is not None:
            res.close()


def run_shard_on_worker(job: ShardJob, k: int) -> ShardStats:
    """:func:`~pipeline.teacher.shard.run_shard` as a dask.distributed task, with the worker's
    own resources (from the plugin the coordinator registered)."""
    worker = get_worker()
    return run_shard(job, k, worker.plugins[PLUGIN_NAME].by_worker[worker.address])
