"""Where precompute tasks run: joblib's local backends, or a dask (or ray) cluster.

The tasks are the same everywhere; only joblib's backend changes. Workers write their files'
rows in place into the pool's segments under the stores folder, so on a cluster that folder
must be on a filesystem every worker and this process share; this process seals the segments
and writes the view.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from common.errors import UserError

LOCAL_BACKENDS = ("loky", "multiprocessing", "threading", "sequential")
BACKENDS = (*LOCAL_BACKENDS, "dask", "ray")


class BackendError(UserError, RuntimeError):
    """A backend that cannot be used here, with what to install or set."""


@contextmanager
def joblib_backend(backend: str, jobs: int, address: str | None = None) -> Iterator[None]:
    """Make ``backend`` joblib's backend for the ``with`` block.

    ``dask``: connect to the scheduler at ``address``, or start a ``distributed.LocalCluster``
    of ``jobs`` single-threaded worker processes. A task lost with its worker is run again
    elsewhere by the scheduler. ``ray``: connect to the cluster at ``address`` (or start one).
    Local backends limit BLAS / OpenMP threads to one per worker.
    """
    from joblib import parallel_config

    if backend in LOCAL_BACKENDS:
        if address:
            raise BackendError(f"--scheduler is for dask or ray; backend {backend!r} runs here")
        inner = {"inner_max_num_threads": 1} if backend == "loky" and jobs != 1 else {}
        with parallel_config(backend=backend, n_jobs=jobs, **inner):
            yield
    elif backend == "dask":
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise BackendError(
                "--backend dask needs dask.distributed: pip install 'mirpatch[dask]'"
            ) from None
        cluster = None
        if address:
            client = Client(address)
        else:
            n = jobs if jobs and jobs > 0 else None
            cluster = LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                host="127.0.0.1",
            )
            client = Client(cluster)
        try:
            with parallel_config(backend="dask", n_jobs=-1):
                yield
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    elif backend == "ray":
        try:
            import ray
            from ray.util.joblib import register_ray
        except ImportError:
            raise BackendError("--backend ray needs ray: pip install 'mirpatch[ray]'") from None
        register_ray()
        started = not ray.is_initialized()
        if started:
            ray.init(address=address)
        try:
            with parallel_config(backend="ray", n_jobs=jobs if jobs > 0 else -1):
                yield
        finally:
            if started:
                ray.shutdown()
    else:
        raise BackendError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
