"""The task runner: an existing Dask scheduler when given, else a temporary local cluster, or this
process where one local worker is asked."""

from __future__ import annotations

import dask
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from oldphoto.settings import get_settings


# Dask's housekeeping defaults suit big machines: on an idle 2-worker local cluster they cost 12% of
# a core (measured here: the workers' 10 ms stack profiler, 20 ms event-loop ticks, 100 ms memory
# checks, 500 ms system monitor, 100 ms work stealing); with these, under 2%. Our tasks are few and
# long, so nothing here needs the finer intervals.
LOCAL_CLUSTER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "500ms",
    "distributed.scheduler.work-stealing-interval": "1s",
}


def task_runner(workers: int | None = None, address: str | None = None,
                preload: tuple[str, ...] = ()) -> TaskRunner:
    """workers: local worker processes (None: 2). One local worker is this process itself, no
    cluster: a cluster's start and stop cost seconds, and one worker gains nothing from it.
    preload: modules that local workers import as they start, before the flow's clock runs."""
    address = address or get_settings().dask_address
    if not address and workers == 1:
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner  # here: distributed takes over half a second to load

    if address:
        if workers:
            raise ValueError("give either a number of local workers or a Dask scheduler address, not both")
        return DaskTaskRunner(address=address)
    dask.config.set(LOCAL_CLUSTER_CONFIG)  # local workers receive this process's Dask config
    # One single-threaded process per worker: the work is numpy/OpenCV/torch, not Python threads.
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers or 2, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None,
                                          "preload": list(preload)})
