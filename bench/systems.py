"""One adapter per system, all with the same five operations.

Workloads only ever call ``init``, ``remote``, ``get``, ``put`` and
``shutdown`` on an adapter, so each workload is written once and runs
unchanged on gdfut, Ray and Dask. The mapping for Dask is the closest honest
equivalent of Ray's API; bench/README.md documents it.

The system itself is imported inside ``init`` (not at module import) so that
W6's measured cold start includes importing the system, and so that this
module can be imported where a system is not installed.
"""

from __future__ import annotations

import importlib.metadata
import os


class RayLikeSystem:
    """gdfut and Ray share the API, so one adapter serves both."""

    module_name = ""

    def __init__(self):
        self._mod = None

    @property
    def name(self) -> str:
        return self.module_name

    def version(self) -> str:
        mod = self._mod or __import__(self.module_name)
        return getattr(mod, "__version__", None) or _dist_version(self.module_name)

    def init(self, num_cpus: int, object_store_memory: int) -> None:
        self._mod = __import__(self.module_name)
        self._mod.init(num_cpus=num_cpus, object_store_memory=object_store_memory,
                       **self._init_extras())

    def _init_extras(self) -> dict:
        return {}

    def remote(self, fn):
        """Return a callable that submits ``fn`` and returns its future."""
        return self._mod.remote(fn).remote

    def get(self, refs):
        return self._mod.get(refs)

    def put(self, value):
        return self._mod.put(value)

    def shutdown(self) -> None:
        if self._mod is not None:
            self._mod.shutdown()


class GdfutSystem(RayLikeSystem):
    module_name = "gdfut"


class RaySystem(RayLikeSystem):
    module_name = "ray"

    def _init_extras(self) -> dict:
        # No dashboard (gdfut and Dask run none here either) and no log
        # forwarding, which would otherwise add driver work to every workload.
        return {"include_dashboard": False, "log_to_driver": False}


class DaskSystem:
    """dask.distributed on a LocalCluster of single-threaded worker processes.

    ``object_store_memory`` has no Dask equivalent (Dask keeps results in each
    worker's heap under a per-worker ``memory_limit`` that also covers task
    memory), so it is accepted and not applied; workers keep Dask's default
    memory limit.
    """

    name = "dask"

    def __init__(self):
        self._client = None
        self._cluster = None

    def version(self) -> str:
        return _dist_version("distributed")

    def init(self, num_cpus: int, object_store_memory: int) -> None:
        from distributed import Client, LocalCluster

        self._cluster = LocalCluster(n_workers=num_cpus, threads_per_worker=1,
                                     processes=True, dashboard_address=None)
        self._client = Client(self._cluster)

    def remote(self, fn):
        client = self._client

        def submit(*args):
            # pure=False: every call is a new task, as with .remote(); Dask
            # would otherwise deduplicate identical calls by hashing them.
            return client.submit(fn, *args, pure=False)

        return submit

    def get(self, refs):
        if isinstance(refs, list):
            return self._client.gather(refs)
        return refs.result()

    def put(self, value):
        # hash=False: ray.put does not hash the value either; Dask's default
        # would tokenize (hash) the whole buffer to deduplicate it.
        return self._client.scatter(value, hash=False)

    def shutdown(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()


SYSTEMS = {"gdfut": GdfutSystem, "ray": RaySystem, "dask": DaskSystem}

# Imported (in a subprocess) to decide whether a system can run here.
IMPORT_PROBES = {"gdfut": "import gdfut; gdfut.init; gdfut.remote",
                 "ray": "import ray", "dask": "import distributed"}


def make_system(name: str):
    return SYSTEMS[name]()


def system_env(base: dict | None = None) -> dict:
    """Environment for every process that runs a system.

    Ray: no import warning, no usage-stats reporting (this machine has no
    network; the reporter would only time out in the background).
    """
    env = dict(os.environ if base is None else base)
    env.setdefault("RAY_DISABLE_IMPORT_WARNING", "1")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def _dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed as a distribution)"
