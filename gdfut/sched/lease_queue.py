"""Node-local lease manager: which queued request gets which worker, and when.

An owner asks its node daemon for a *lease* — a worker plus a slice of the
node's resources — and then pushes tasks straight to that worker until it
returns the lease (ownership paper, §4). This module is the pure state
machine behind that: events in (method calls), instructions out (frozen
dataclasses the shell carries out). No I/O, no clocks, no threads.

Resource accounting
  ``available + in_use == total + overcommit``, where ``in_use`` is what the
  leases hold (a blocked lease's CPU excluded). ``overcommit`` is normally
  empty; see ``worker_unblocked``.

Queueing
  Requests wait in one bounded FIFO (``max_queue``). Dispatch walks it in
  arrival order and grants every request whose resources are free and for
  which an idle worker exists. A request that does not fit now is *skipped*,
  not waited on, so a big request (say 4 GPUs) does not hold up small ones
  that fit; requests of the same shape stay FIFO among themselves because
  once a shape is skipped every later request of that shape is skipped too.
  The price: a steady stream of small requests can starve a big one (Ray
  behaves the same); a reservation for long-skipped requests is not done.

Workers
  The pool grows on demand: when requests fit but no idle worker exists we
  emit ``StartWorker(n)`` for just the workers those requests need, minus
  starts already in flight, capped so that active task workers (idle or
  leased, not blocked, not dedicated to an actor) plus starting ones stay
  within ``max_workers``. Blocked workers do not count, or nested ``get``
  would deadlock once every worker waits on a child that cannot start.
  Actor requests are not capped (resources and the queue bound them).
  Idle workers are reused last-in first-out (warmest first).

Start throttle
  At most ``max_starting`` worker processes start at once (the shell sets it
  from the host's CPU count). A burst of requests (200 actors at once) would
  otherwise start 200 interpreters together on a few cores, and each would
  miss its own start-up deadline. Requests beyond what the starting workers
  serve simply stay queued; every registration (``worker_started``) runs
  dispatch again, which grants the new worker and starts the next one, so
  starts roll through the queue ``max_starting`` at a time. ``prestart``
  asks for warm workers through the same throttle.

GPUs
  A node's GPUs are whole devices 0..n-1, tracked per device, and every
  grant names its ``gpu_ids``. A fractional request (0 < g < 1) takes a share
  of one device (best fit: the fullest device that still has room, so whole
  devices stay free for whole-GPU requests); a whole request takes g fully
  free devices. "GPU_memory" is accounted node-wide, not per device.

Placement group bundles
  ``prepare_bundle`` sets a bundle's plain resources (and whole GPU devices,
  or a share of one) aside; ``commit_bundle`` then adds its renamed
  resources (``placement_groups.bundle_supply``) to the node, which only
  requests made with ``bundle=(group, index)`` ask for. Such a request takes
  its GPU devices from the bundle's own devices. ``return_bundles`` gives a
  group's bundles back (a rollback, or the group removed: its queued
  requests are rejected and its workers killed, as Ray does).

Actors
  A worker leased for an actor is dedicated: when the lease ends the worker
  is killed, never put back in the idle pool. ``placement`` lets an actor
  need more to be *placed* than it *holds* (Ray: 1 CPU to place, 0 CPU while
  alive; see ``resources.actor_resources``).
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Union

from gdfut.sched.placement_groups import group_resource
from gdfut.sched.resources import CPU, EMPTY, GPU, UNITS_PER_ONE, ResourceSet

RequestId = Hashable
WorkerId = Hashable
ClientId = Hashable
LeaseId = int


# -- instructions ---------------------------------------------------------------


@dataclass(frozen=True)
class GrantLease:
    request_id: RequestId
    worker_id: WorkerId
    lease_id: LeaseId
    gpu_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class StartWorker:
    count: int


@dataclass(frozen=True)
class QueueFull:
    """Rejected: the bounded queue is full. The client should back off or go elsewhere."""

    request_id: RequestId
    max_queue: int


@dataclass(frozen=True)
class Reject:
    """Rejected for good on this node; the shell may spill back via ``policy``."""

    request_id: RequestId
    reason: str  # "infeasible_here" | "invalid_request" | "workers_fail"
    message: str
    missing: dict[str, int | float] = field(default_factory=dict)


@dataclass(frozen=True)
class LeaseLost:
    """Tell ``client_id`` its lease is gone (the worker died under it)."""

    lease_id: LeaseId
    client_id: ClientId
    request_id: RequestId
    reason: str


@dataclass(frozen=True)
class KillWorker:
    worker_id: WorkerId
    reason: str


@dataclass(frozen=True)
class RequestCancelled:
    request_id: RequestId


Instruction = Union[
    GrantLease, StartWorker, QueueFull, Reject, LeaseLost, KillWorker, RequestCancelled
]


# -- internal state -------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    request_id: RequestId
    client_id: ClientId
    held: ResourceSet  # what the lease holds once granted
    placement: ResourceSet  # what must be free to grant it (held, or more for actors)
    is_actor: bool
    bundle: tuple | None = None  # (group hex, bundle index or -1): runs in that group

    @property
    def shape(self) -> tuple[ResourceSet, ResourceSet]:
        return (self.placement, self.held)


@dataclass
class _Lease:
    lease_id: LeaseId
    request_id: RequestId
    worker_id: WorkerId
    client_id: ClientId
    held: ResourceSet
    gpu_ids: tuple[int, ...]
    gpu_units_each: int  # units taken from each device in gpu_ids
    is_actor: bool
    blocked: bool = False
    bundle: tuple | None = None  # the request's (group hex, index)
    gpu_pool: tuple | None = None  # key of the bundle whose devices it took, if any

    def in_use(self) -> ResourceSet:
        """What this lease takes from the node right now (no CPU while blocked)."""
        return self.held.without(CPU) if self.blocked else self.held


@dataclass
class _Bundle:
    """One placement group bundle reserved on this node."""

    resources: ResourceSet  # the plain resources set aside for it
    supply: ResourceSet  # renamed resources it adds to the node once committed
    gpu_ids: tuple[int, ...]
    gpu_units_each: int
    gpu_free: dict[int, int]  # device -> units still free for requests in the bundle
    committed: bool = False


class LeaseManager:
    """Pure lease scheduler for one node. Every event returns a list of instructions."""

    def __init__(
        self,
        node_id: Hashable,
        total: ResourceSet,
        max_queue: int = 10_000,
        max_workers: int | None = None,
        first_lease_id: int = 1,
        max_starting: int | None = None,
    ) -> None:
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        gpu_units = total.units(GPU)
        if gpu_units % UNITS_PER_ONE:
            raise ValueError(f"a node has whole GPUs, got GPU={total.quantity(GPU)}")
        if max_workers is None:
            max_workers = max(1, math.ceil(total.quantity(CPU)))
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        if max_starting is not None and max_starting < 1:
            raise ValueError(f"max_starting must be >= 1 or None, got {max_starting}")
        self.node_id = node_id
        self.total = total
        self.max_queue = max_queue
        self.max_workers = max_workers
        self.max_starting = max_starting  # None: no bound on concurrent starts
        self._available = total
        self._overcommit = EMPTY
        self._gpu_free = [UNITS_PER_ONE] * (gpu_units // UNITS_PER_ONE)
        self._queue: dict[RequestId, _Request] = {}  # insertion order = arrival order
        self._leases: dict[LeaseId, _Lease] = {}
        self._lease_of_request: dict[RequestId, LeaseId] = {}
        self._lease_of_worker: dict[WorkerId, LeaseId] = {}
        self._workers: set[WorkerId] = set()
        self._idle: list[WorkerId] = []  # stack: last returned is reused first
        self._starting = 0  # StartWorker counts not yet answered
        self._warm_wanted = 0  # prestarted workers not started yet (throttle)
        self._next_lease_id = first_lease_id
        self._bundles: dict[tuple, _Bundle] = {}  # (group hex, index) -> bundle
        self._reserved = EMPTY  # plain resources set aside by bundles

    # -- read-only views ------------------------------------------------------

    @property
    def available(self) -> ResourceSet:
        return self._available

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    @property
    def num_leases(self) -> int:
        return len(self._leases)

    def client_of(self, lease_id: LeaseId) -> ClientId | None:
        """Who holds lease ``lease_id`` (None when there is no such lease)."""
        lease = self._leases.get(lease_id)
        return None if lease is None else lease.client_id

    # -- events: requests -----------------------------------------------------

    def request_lease(
        self,
        request_id: RequestId,
        resources: ResourceSet,
        client_id: ClientId,
        is_actor: bool = False,
        placement: ResourceSet | None = None,
        bundle: tuple | None = None,
    ) -> list[Instruction]:
        """Ask for a worker holding ``resources``; ``placement`` must be free to grant.
        ``bundle=(group hex, index)``: the resources are that group's renamed ones."""
        if request_id in self._queue:
            return []  # a retried request: already waiting
        if request_id in self._lease_of_request:
            lease = self._leases[self._lease_of_request[request_id]]
            return [GrantLease(request_id, lease.worker_id, lease.lease_id, lease.gpu_ids)]
        placement = resources if placement is None else placement
        if not resources.fits_in(placement):
            raise ValueError(f"placement {placement} must cover held resources {resources}")
        request = _Request(request_id, client_id, resources, placement, is_actor, bundle)
        rejection = self._rejection(request)
        if rejection is not None:
            return [rejection]
        if len(self._queue) >= self.max_queue:
            # Full queue: grant only if it can run right now without queueing.
            if self._idle and self._fits_now(request):
                return [self._grant(request)]
            return [QueueFull(request_id, self.max_queue)]
        self._queue[request_id] = request
        return self._dispatch()

    def _rejection(self, request: _Request) -> Reject | None:
        """Why this node can never grant ``request``, or None if it could."""
        gpus = request.held.units(GPU)
        if gpus > UNITS_PER_ONE and gpus % UNITS_PER_ONE:
            message = f"GPU={request.held.quantity(GPU)}: must be a fraction below 1 or whole"
            return Reject(request.request_id, "invalid_request", message)
        if request.bundle is not None and not self._group_bundles(*request.bundle):
            group, index = request.bundle
            which = "any bundle" if index < 0 else f"bundle {index}"
            message = (f"placement group {group} has no {which} on node {self.node_id} "
                       f"(it was removed, or the bundle is elsewhere)")
            return Reject(request.request_id, "infeasible_here", message)
        if request.placement.fits_in(self.total):
            return None
        missing = request.placement.missing_from(self.total)
        message = (
            f"node {self.node_id} lacks {missing}: needs {request.placement.to_dict()}, "
            f"node total {self.total.to_dict()}"
        )
        return Reject(request.request_id, "infeasible_here", message, missing)

    def cancel_request(self, request_id: RequestId) -> list[Instruction]:
        """Drop a queued request. A granted one must be returned with ``return_lease``."""
        if self._queue.pop(request_id, None) is None:
            return []
        return [RequestCancelled(request_id)]

    def client_died(self, client_id: ClientId) -> list[Instruction]:
        """Forget its queued requests; kill the workers it leased (they run its code)."""
        for request_id in [r.request_id for r in self._queue.values() if r.client_id == client_id]:
            del self._queue[request_id]
        out: list[Instruction] = []
        for lease in [l for l in self._leases.values() if l.client_id == client_id]:
            self._release(lease)
            self._workers.discard(lease.worker_id)
            out.append(KillWorker(lease.worker_id, f"owner {client_id} died"))
        return out + self._dispatch()

    # -- events: leases -------------------------------------------------------

    def detach(self, lease_id: LeaseId, client_id: ClientId) -> bool:
        """A detached actor outlives its creator: the lease on its worker is
        held by the worker itself from now on, so ``client_died(creator)``
        leaves it, and it ends with the worker (``worker_died``). Only the
        holder of an actor lease may do this; False (nothing changed) otherwise."""
        lease = self._leases.get(lease_id)
        if lease is None or not lease.is_actor or lease.client_id != client_id:
            return False
        lease.client_id = lease.worker_id
        return True

    def return_lease(self, lease_id: LeaseId, worker_reusable: bool = True) -> list[Instruction]:
        """The client is done with the lease. Unknown ids are ignored (idempotent)."""
        lease = self._leases.get(lease_id)
        if lease is None:
            return []
        self._release(lease)
        out: list[Instruction] = []
        if lease.is_actor or not worker_reusable:
            self._workers.discard(lease.worker_id)
            why = "actor ended" if lease.is_actor else "returned as not reusable"
            out.append(KillWorker(lease.worker_id, why))
        else:
            self._idle.append(lease.worker_id)
        return out + self._dispatch()

    def worker_blocked(self, worker_id: WorkerId) -> list[Instruction]:
        """A leased worker waits in ``get``: lend its CPU out so other tasks can run."""
        lease = self._lease_for_worker(worker_id)
        if lease is None or lease.blocked:
            return []
        lease.blocked = True
        self._give_back(lease.held.only(CPU))
        return self._dispatch()

    def worker_unblocked(self, worker_id: WorkerId) -> list[Instruction]:
        """Take the CPU back, even if it is no longer free.

        Refusing would leave a task that holds a lease unable to continue, so
        the node goes temporarily over capacity instead: ``available`` drops
        to zero and the shortfall is recorded as ``overcommit``, which
        returned resources pay off before anything becomes available again.
        No new CPU is granted until the node is back within capacity.
        """
        lease = self._lease_for_worker(worker_id)
        if lease is None or not lease.blocked:
            return []
        lease.blocked = False
        self._available, shortfall = self._available.subtract_clamped(lease.held.only(CPU))
        self._overcommit = self._overcommit.add(shortfall)
        return []

    # -- events: workers ------------------------------------------------------

    def worker_started(self, worker_id: WorkerId) -> list[Instruction]:
        """A worker process registered. Also accepts workers nobody asked for."""
        if worker_id in self._workers:
            return []  # a repeated registration message
        self._starting = max(0, self._starting - 1)
        self._workers.add(worker_id)
        self._idle.append(worker_id)
        return self._dispatch()

    def worker_start_failed(self, count: int = 1) -> list[Instruction]:
        """Starts that will never register. Nothing is retried here: the shell
        backs off (it has the clock) and then calls ``dispatch()``."""
        self._starting = max(0, self._starting - count)
        return []

    def worker_died(self, worker_id: WorkerId) -> list[Instruction]:
        """Free the dead worker's lease (telling its client) and refill the pool."""
        if worker_id not in self._workers:
            return []  # already killed by us, or never known
        self._workers.discard(worker_id)
        out: list[Instruction] = []
        lease = self._lease_for_worker(worker_id)
        if lease is None:
            self._idle.remove(worker_id)
        else:
            self._release(lease)
            out.append(LeaseLost(lease.lease_id, lease.client_id, lease.request_id, "worker died"))
        return out + self._dispatch()

    def trim_idle_workers(self, keep: int) -> list[Instruction]:
        """Kill idle workers beyond ``keep``, coldest (least recently used) first."""
        out: list[Instruction] = []
        while len(self._idle) > max(0, keep):
            worker_id = self._idle.pop(0)
            self._workers.discard(worker_id)
            out.append(KillWorker(worker_id, "idle pool trimmed"))
        return out

    def prestart(self, count: int) -> list[Instruction]:
        """Start ``count`` warm workers (within the start throttle), so the
        first requests find one idle."""
        if count < 0:
            raise ValueError(f"prestart count must be >= 0, got {count}")
        self._warm_wanted += count
        return self._dispatch()

    def dispatch(self) -> list[Instruction]:
        """Re-examine the queue (e.g. after backing off from failed worker starts)."""
        return self._dispatch()

    def reject_queued(self, message: str) -> list[Instruction]:
        """Answer every queued request with an error (workers cannot start here)."""
        out: list[Instruction] = [Reject(r.request_id, "workers_fail", message)
                                  for r in self._queue.values()]
        self._queue.clear()
        return out

    # -- dispatch ---------------------------------------------------------------

    def _dispatch(self) -> list[Instruction]:
        """Grant what can run now; start workers for what fits but has none."""
        out: list[Instruction] = []
        skipped: set[tuple[ResourceSet, ResourceSet]] = set()
        for request in list(self._queue.values()):
            if not self._idle:
                break
            if request.shape in skipped:
                continue
            if not self._fits_now(request):
                skipped.add(request.shape)
                continue
            del self._queue[request.request_id]
            out.append(self._grant(request))
        demand = self._workers_to_start()
        start = demand + self._warm_wanted
        if self.max_starting is not None:
            start = min(start, self.max_starting - self._starting)
        if start > 0:
            self._warm_wanted -= max(0, start - demand)  # queued requests go first
            self._starting += start
            out.append(StartWorker(start))
        return out

    def _workers_to_start(self) -> int:
        """Workers needed by queued requests that fit now, beyond starts in
        flight (before the start throttle)."""
        if self._idle:
            return 0  # dispatch left idle workers: nothing queued fits right now
        available, gpu_free = self._available, list(self._gpu_free)
        skipped: set[tuple[ResourceSet, ResourceSet]] = set()
        actors = tasks = 0
        for request in self._queue.values():
            if request.shape in skipped:
                continue
            gpu_ids = self._gpus_if_fits(request, available, gpu_free)
            if gpu_ids is None:
                skipped.add(request.shape)
                continue
            available = available.subtract(request.held)
            if request.bundle is None:   # bundle devices: not simulated (only a count)
                _take_gpus(gpu_free, gpu_ids, _gpu_units_each(request.held))
            actors += request.is_actor
            tasks += not request.is_actor
        room = max(0, self.max_workers - self._active_task_workers())
        return max(0, actors + min(tasks, room) - self._starting)

    def _active_task_workers(self) -> int:
        busy = sum(1 for l in self._leases.values() if not l.is_actor and not l.blocked)
        return len(self._idle) + busy

    def _grant(self, request: _Request) -> GrantLease:
        gpu_ids = self._gpus_if_fits(request, self._available, self._gpu_free)
        assert gpu_ids is not None and self._idle, f"grant of {request} that cannot run"
        pool = None
        if request.bundle is not None:
            pool, gpu_ids = self._bundle_gpus(request)
        worker_id = self._idle.pop()
        lease = _Lease(
            lease_id=self._next_lease_id,
            request_id=request.request_id,
            worker_id=worker_id,
            client_id=request.client_id,
            held=request.held,
            gpu_ids=gpu_ids,
            gpu_units_each=_gpu_units_each(request.held, self._gpu_name(request)),
            is_actor=request.is_actor,
            bundle=request.bundle,
            gpu_pool=pool,
        )
        self._next_lease_id += 1
        self._available = self._available.subtract(lease.held)
        if pool is None:
            _take_gpus(self._gpu_free, gpu_ids, lease.gpu_units_each)
        else:
            for device in gpu_ids:
                self._bundles[pool].gpu_free[device] -= lease.gpu_units_each
        self._leases[lease.lease_id] = lease
        self._lease_of_request[lease.request_id] = lease.lease_id
        self._lease_of_worker[worker_id] = lease.lease_id
        return GrantLease(request.request_id, worker_id, lease.lease_id, gpu_ids)

    def _release(self, lease: _Lease) -> None:
        """Return a lease's resources and forget it (the worker's fate is the caller's)."""
        self._give_back(lease.in_use())
        bundle = self._bundles.get(lease.gpu_pool) if lease.gpu_pool is not None else None
        for device in lease.gpu_ids:
            if bundle is not None:
                bundle.gpu_free[device] += lease.gpu_units_each
            else:
                self._gpu_free[device] += lease.gpu_units_each
        del self._leases[lease.lease_id]
        del self._lease_of_request[lease.request_id]
        del self._lease_of_worker[lease.worker_id]

    def _give_back(self, resources: ResourceSet) -> None:
        """Pay off any overcommit first; the rest becomes available."""
        self._overcommit, surplus = self._overcommit.subtract_clamped(resources)
        self._available = self._available.add(surplus)

    def _lease_for_worker(self, worker_id: WorkerId) -> _Lease | None:
        lease_id = self._lease_of_worker.get(worker_id)
        return None if lease_id is None else self._leases[lease_id]

    def _fits_now(self, request: _Request) -> bool:
        return self._gpus_if_fits(request, self._available, self._gpu_free) is not None

    def _gpus_if_fits(
        self, request: _Request, available: ResourceSet, gpu_free: list[int]
    ) -> tuple[int, ...] | None:
        """GPU ids the request would get, or None if it does not fit in ``available``."""
        if not request.placement.fits_in(available):
            return None
        if request.bundle is not None:
            found = self._bundle_gpus(request)
            return None if found is None else found[1]
        return _pick_gpus(gpu_free, request.held.units(GPU))

    # -- placement group bundles ------------------------------------------------

    def prepare_bundle(self, key: tuple, resources: ResourceSet, supply: ResourceSet) -> bool:
        """Set ``resources`` aside for bundle ``key=(group hex, index)`` if they are
        free now (False if not). Idempotent."""
        if key in self._bundles:
            return True
        if not resources.fits_in(self._available):
            return False
        gpu_ids = _pick_gpus(self._gpu_free, resources.units(GPU))
        if gpu_ids is None:
            return False
        units_each = _gpu_units_each(resources)
        self._available = self._available.subtract(resources)
        _take_gpus(self._gpu_free, gpu_ids, units_each)
        self._reserved = self._reserved.add(resources)
        self._bundles[key] = _Bundle(resources, supply, gpu_ids, units_each,
                                     dict.fromkeys(gpu_ids, units_each))
        return True

    def commit_bundle(self, key: tuple) -> list[Instruction]:
        """Make a prepared bundle usable: its renamed resources join the node."""
        bundle = self._bundles.get(key)
        if bundle is None or bundle.committed:
            return []
        bundle.committed = True
        self.total = self.total.add(bundle.supply)
        self._available = self._available.add(bundle.supply)
        return self._dispatch()

    def return_bundles(self, group: str, indexes=None) -> list[Instruction]:
        """Give back group ``group``'s bundles here. ``indexes=None``: all of them
        (the group is gone: its queued requests are rejected, its workers
        killed); else only those, which must be uncommitted (a rollback)."""
        keys = [k for k in self._bundles if k[0] == group and (indexes is None or k[1] in indexes)]
        if not keys:
            return []
        out: list[Instruction] = []
        if indexes is None:
            out += self._end_group_work(group)
        for key in keys:
            bundle = self._bundles.pop(key)
            assert indexes is None or not bundle.committed, f"partial return of committed {key}"
            if bundle.committed:
                self.total = self.total.subtract(bundle.supply)
                self._available = self._available.subtract(bundle.supply)
            self._available = self._available.add(bundle.resources)
            self._reserved = self._reserved.subtract(bundle.resources)
            for device in bundle.gpu_ids:
                self._gpu_free[device] += bundle.gpu_units_each
        return out + self._dispatch()

    def _end_group_work(self, group: str) -> list[Instruction]:
        out: list[Instruction] = []
        for request in [r for r in self._queue.values() if r.bundle and r.bundle[0] == group]:
            del self._queue[request.request_id]
            out.append(Reject(request.request_id, "infeasible_here",
                              f"placement group {group} was removed"))
        for lease in [l for l in self._leases.values() if l.bundle and l.bundle[0] == group]:
            self._release(lease)
            self._workers.discard(lease.worker_id)
            out.append(KillWorker(lease.worker_id, f"placement group {group} was removed"))
        return out

    def _group_bundles(self, group: str, index: int) -> list[tuple]:
        """Keys of the committed bundles a request for (group, index) may use."""
        return [k for k, b in self._bundles.items()
                if b.committed and k[0] == group and (index < 0 or k[1] == index)]

    @staticmethod
    def _gpu_name(request: _Request) -> str:
        return GPU if request.bundle is None else group_resource(GPU, request.bundle[0])

    def _bundle_gpus(self, request: _Request) -> tuple[tuple, tuple[int, ...]] | None:
        """(bundle key, devices) for a request in a group: from the first of its
        bundles here whose devices have room."""
        units = request.held.units(self._gpu_name(request))
        for key in self._group_bundles(*request.bundle):
            pool = self._bundles[key].gpu_free
            devices = sorted(pool)
            picked = _pick_gpus([pool[d] for d in devices], units)
            if picked is not None:
                return key, tuple(devices[i] for i in picked)
        return None

    # -- invariants and status ------------------------------------------------

    def validate(self) -> None:
        """Assert every invariant of the state machine (cheap enough for tests)."""
        in_use = EMPTY
        for lease in self._leases.values():
            in_use = in_use.add(lease.in_use())
            assert self._lease_of_worker.get(lease.worker_id) == lease.lease_id
            assert self._lease_of_request.get(lease.request_id) == lease.lease_id
            assert lease.worker_id in self._workers, f"lease on unknown worker {lease}"
            assert lease.request_id not in self._queue
        assert len(self._lease_of_worker) == len(self._leases) == len(self._lease_of_request)
        assert self._available.add(in_use).add(self._reserved) == \
            self.total.add(self._overcommit), (
            f"accounting: available {self._available} + in use {in_use} + reserved "
            f"{self._reserved} != total {self.total} + overcommit {self._overcommit}"
        )
        assert self._available.fits_in(self.total)
        for name in self._overcommit:
            assert self._available.units(name) == 0, f"overcommitted {name} yet available"
        assert len(set(self._idle)) == len(self._idle)
        idle = set(self._idle)
        assert idle.isdisjoint(self._lease_of_worker)
        assert idle | set(self._lease_of_worker) == self._workers, "worker neither idle nor leased"
        assert len(self._queue) <= self.max_queue
        if self._idle:  # dispatch is complete: nothing queued could run right now
            for request in self._queue.values():
                assert not self._fits_now(request), f"{request} could run but waits"
        assert self._starting >= 0 and self._warm_wanted >= 0
        if self.max_starting is not None:
            assert self._starting <= self.max_starting, "start throttle exceeded"
        self._validate_gpus()

    def _validate_gpus(self) -> None:
        used = [0] * len(self._gpu_free)
        pool_used: dict[tuple, int] = {}
        for lease in self._leases.values():
            for device in lease.gpu_ids:
                if lease.gpu_pool is None:
                    used[device] += lease.gpu_units_each
                else:
                    pool_used[lease.gpu_pool] = pool_used.get(lease.gpu_pool, 0) + \
                        lease.gpu_units_each
        for key, bundle in self._bundles.items():
            for device in bundle.gpu_ids:
                used[device] += bundle.gpu_units_each
            assert sum(bundle.gpu_free.values()) + pool_used.get(key, 0) == \
                bundle.gpu_units_each * len(bundle.gpu_ids), f"bundle {key} devices"
        for device, free in enumerate(self._gpu_free):
            assert 0 <= free <= UNITS_PER_ONE and free + used[device] == UNITS_PER_ONE
        assert sum(self._gpu_free) == self._available.units(GPU)

    def stats(self) -> dict[str, Any]:
        """Plain, msgpack-friendly snapshot for the status API."""
        return {
            "node_id": self.node_id,
            "total": self.total.to_dict(),
            "available": self._available.to_dict(),
            "overcommitted": self._overcommit.to_dict(),
            "gpu_free": [units / UNITS_PER_ONE for units in self._gpu_free],
            "num_leases": len(self._leases),
            "num_actor_leases": sum(1 for l in self._leases.values() if l.is_actor),
            "blocked_workers": sum(1 for l in self._leases.values() if l.blocked),
            "workers": len(self._workers),
            "idle_workers": len(self._idle),
            "starting_workers": self._starting,
            "max_starting": self.max_starting,
            "max_workers": self.max_workers,
            "queued_requests": len(self._queue),
            "max_queue": self.max_queue,
            "bundles": len(self._bundles),
        }


# -- GPU devices ------------------------------------------------------------------


def _gpu_units_each(held: ResourceSet, name: str = GPU) -> int:
    """Units taken from each assigned device: the fraction, or a whole device."""
    units = held.units(name)
    return units if units < UNITS_PER_ONE else UNITS_PER_ONE


def _pick_gpus(gpu_free: list[int], units: int) -> tuple[int, ...] | None:
    """Devices for a GPU need of ``units``, or None if they are not free now."""
    if units == 0:
        return ()
    if units < UNITS_PER_ONE:
        # Best fit: the fullest device that still has room keeps others whole.
        fits = [(free, device) for device, free in enumerate(gpu_free) if free >= units]
        return (min(fits)[1],) if fits else None
    assert units % UNITS_PER_ONE == 0, f"GPU need {units} units is not whole or fractional"
    whole = [device for device, free in enumerate(gpu_free) if free == UNITS_PER_ONE]
    count = units // UNITS_PER_ONE
    return tuple(whole[:count]) if len(whole) >= count else None


def _take_gpus(gpu_free: list[int], gpu_ids: tuple[int, ...], units_each: int) -> None:
    for device in gpu_ids:
        assert gpu_free[device] >= units_each
        gpu_free[device] -= units_each
