"""``--engine dask``: the same partitions as tasks on Dask distributed.

Each task is one partition: it reads every input itself (from storage every worker can reach)
and aggregates its share of the flows, clock-ticked by the rest exactly as in a local run; the
client joins what the tasks return. What spreads over the cluster is the aggregation, export
and formatting; every task walks and decodes the whole stream, and a task's results come back
whole (memory on the client grows with the capture, unlike a local run).

With no scheduler address a LocalCluster is started bound to 127.0.0.1 (nothing listens
beyond this machine). A scheduler runs whatever its clients submit: never let untrusted hosts
reach it (README).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

from flowsense.config import Config
from flowsense.flows.table import WatchRule
from flowsense.parallel.partition import Item, Output, Partition
from flowsense.parallel.plan import InputFile


def partition_task(p: int, n: int, key: int, config: Config, rules: list[WatchRule],
                   output: Output, files: list[InputFile]) -> dict[str, Any]:
    """One partition over every input, in order (runs on a Dask worker)."""
    part = Partition(p, n, key, config, rules, output, files)
    for f in range(len(files)):
        part.read_file(f)
    return part.finish()


def quiet_dask() -> None:
    """Dask logs its scheduler's and workers' comings and goings (INFO, and a WARNING when a
    local worker is slow to stop): stderr keeps its errors only, unless -v asked for more."""
    if logging.getLogger("flowsense").getEffectiveLevel() >= logging.WARNING:
        logging.getLogger("distributed").setLevel(logging.ERROR)


def local_cluster(n_workers: int, processes: bool = True) -> Any:
    """A LocalCluster without a dashboard: worker processes talk over TCP on 127.0.0.1; with
    ``processes=False`` (threads, for tests) nothing listens on any network at all (inproc)."""
    from distributed import LocalCluster

    quiet_dask()
    where = {"host": "127.0.0.1"} if processes else {}
    with warnings.catch_warnings():  # "port 8787 in use": its HTTP endpoint moves, on loopback
        warnings.simplefilter("ignore", UserWarning)
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=processes,
                            dashboard_address=None, **where)


def run_dask(files: list[InputFile], config: Config, rules: list[WatchRule], output: Output,
             n_parts: int, key: int, scheduler: Any,
             on_round: Callable[[list[list[Item]]], None]) -> list[dict[str, Any]]:
    """``scheduler``: an address (``tcp://host:8786``), a running Client or cluster, or None
    for a local cluster of ``n_parts`` workers on loopback."""
    from distributed import Client

    quiet_dask()
    cluster = None
    if scheduler is None:
        cluster = local_cluster(n_parts)
        client = Client(cluster)
    elif isinstance(scheduler, Client):
        client = scheduler
    else:
        client = Client(scheduler)
    try:
        futures = [client.submit(partition_task, p, n_parts, key, config, rules, output, files,
                                 pure=False) for p in range(n_parts)]
        finals = client.gather(futures)
    finally:
        if client is not scheduler:
            client.close()
        if cluster is not None:
            cluster.close()
    on_round([f["items"] for f in finals])
    return finals
