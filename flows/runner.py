"""The Dask task runner: a temporary local cluster by default, an existing scheduler when given."""

from __future__ import annotations

import dask
from prefect_dask import DaskTaskRunner

from oldphoto.settings import get_settings


def dask_runner(workers: int | None = None, address: str | None = None,
                preload: tuple[str, ...] = ()) -> DaskTaskRunner:
    """preload: modules that local workers import as they start, before the flow's clock runs."""
    address = address or get_settings().dask_address
    if address:
        if workers:
            raise ValueError("give either a number of local workers or a Dask scheduler address, not both")
        return DaskTaskRunner(address=address)
    # The workers' statistical profiler samples every thread's stack every 10 ms and ships the result
    # to the scheduler: a debugging aid that costs a few percent of a 2-core machine. Local workers
    # receive this process's Dask config when they start.
    dask.config.set({"distributed.worker.profile.enabled": False})
    # One single-threaded process per worker: the work is numpy/OpenCV/torch, not Python threads.
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers or 2, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None,
                                          "preload": list(preload)})
