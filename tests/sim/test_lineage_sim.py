"""Seeded simulation: one owner's ReferenceTable and Lineage machines under
random tasks, ref drops, node deaths (every copy on that node lost) and
reads, with the same reactions as the shell (TaskSubmitter's lineage
section). Invariants of both machines hold after every step; every read
ends with a value or an ObjectLostError reason the machine gave; when
every ref is dropped, no lineage is left.

Faults: nodes die at random steps, and ``test_node_death_at_each_step``
kills one at every step of a short run in turn; task replies are dropped
(the worker died after the task ran: the shell runs it again, so it stays
pending) and arrive in any order (any pending task may end next)."""
import random

import pytest

from gdfut import lineage as lin
from gdfut import ownership as own

NODES = ("n1", "n2", "n3")


class Owner:
    """The owner: table + lineage, and what the shell does with them."""

    def __init__(self, rng, max_bytes, drop=0.0):
        self.rng = rng
        self.drop_reply = drop    # chance that a finished task's reply is lost
        self.table = own.ReferenceTable("me")
        self.lineage = lin.Lineage(max_bytes)
        self.specs = {}           # tid -> (arg oids, ret oid), kept lineage
        self.pending = {}         # tid -> rebuild?, while (re-)running
        self.args = {}            # tid -> its argument oids (the pending spec)
        self.refs = []            # oids held by the "user"
        self.dead = set()
        self.n = 0
        self.failed = {}          # oid -> reason
        self.dropped = 0

    def run(self, instructions):
        for ins in instructions:
            if isinstance(ins, own.ReleaseLineage):
                self.forget(self.lineage.returns_released(ins.tid))
            elif isinstance(ins, own.ObjectLost):
                self.lost(ins.oid, ins.lineage)

    def forget(self, instructions):
        for ins in instructions:
            self.specs.pop(ins.tid, None)

    def submit(self):
        self.n += 1
        tid, oid = f"t{self.n}", f"o{self.n}"
        args = self.rng.sample(self.refs, min(len(self.refs), self.rng.randint(0, 2)))
        self.table.add_owned(oid, lineage=tid)
        self.table.add_local_ref(oid)
        self.table.task_submitted(tid, args)
        self.specs[tid] = (tuple(args), oid)
        self.args[tid] = tuple(args)
        self.forget(self.lineage.recorded(tid, [a.replace("o", "t") for a in args],
                                          self.rng.randint(1, 30), self.rng.choice([0, 1, 3, -1])))
        self.pending[tid] = False
        self.refs.append(oid)

    def finish_one(self):
        """A pending task's worker reads its arguments (finding lost ones, as
        CoreWorker.pin_or_recover does) and, when all are there, ends."""
        if not self.pending:
            return
        tid = self.rng.choice(sorted(self.pending))
        for a in self.args[tid]:
            for loc in self.table.locations(a):
                if loc[0] in self.dead:
                    self.run(self.table.remove_location(a, loc))
        states = {self.table.status(a) for a in self.args[tid]}
        if own.Status.OWNED_PENDING in states:
            return
        if self.rng.random() < self.drop_reply:
            self.dropped += 1
            return                # reply lost with its worker: the task runs again
        rebuild = self.pending.pop(tid)
        oid = "o" + tid[1:]
        if own.Status.OWNED_FAILED in states:        # a lost argument: the task fails too
            self.run(self.table.object_failed(oid, "dependency"))
        else:
            node = self.rng.choice([n for n in NODES if n not in self.dead])
            self.run(self.table.object_ready(oid, 8, (node, "host")))
        self.run(self.table.task_finished(tid))
        if rebuild:
            self.forget(self.lineage.rebuilt(tid))

    def lost(self, oid, tid):
        self.run(self.table.object_rebuilding(oid))
        d = self.lineage.object_lost(oid, tid)
        if isinstance(d, lin.Rebuild):
            self.rebuild(d.tid)
        elif isinstance(d, lin.Unrecoverable):
            self.failed[oid] = d.reason
            self.run(self.table.object_failed(oid, d.reason))

    def rebuild(self, tid):
        args, _ = self.specs[tid]
        revived = [a for a in args if not self.table.is_owned(a)]
        for a in revived:
            self.table.object_revived(a, lineage=a.replace("o", "t"))
        self.table.task_submitted(tid, args)
        self.pending[tid] = True
        for a in revived:
            self.lost(a, a.replace("o", "t"))

    def kill_node(self, node):
        self.dead.add(node)
        for oid in list(self.refs):
            if (node, "host") in self.table.locations(oid):
                self.run(self.table.remove_location(oid, (node, "host")))

    def drop(self):
        oid = self.refs.pop(self.rng.randrange(len(self.refs)))
        self.run(self.table.remove_local_ref(oid))

    def validate(self):
        self.table.validate()
        self.lineage.validate()
        for tid, rebuild in self.pending.items():
            assert not rebuild or tid in self.specs, tid   # a re-run's lineage is kept
        assert set(self.specs) <= {f"t{i}" for i in range(1, self.n + 1)}


def run_sim(seed, steps=200, drop=0.0, kill_at=None):
    rng = random.Random(seed)
    o = Owner(rng, max_bytes=rng.choice([40, 200, 10_000]), drop=drop)
    for i in range(steps):
        if i == kill_at and len(o.dead) < len(NODES) - 1:
            o.kill_node(rng.choice([n for n in NODES if n not in o.dead]))
            o.validate()
        r = rng.random()
        if r < 0.35:
            o.submit()
        elif r < 0.7:
            o.finish_one()
        elif r < 0.75 and len(o.dead) < len(NODES) - 1:
            o.kill_node(rng.choice([n for n in NODES if n not in o.dead]))
        elif o.refs:
            o.drop()
        o.validate()
    finish_and_check(o)
    return o


@pytest.mark.parametrize("seed", range(40))
def test_random_losses_rebuild_or_fail_and_release_everything(seed):
    run_sim(seed)


@pytest.mark.parametrize("seed", range(20))
def test_dropped_and_reordered_replies(seed):
    o = run_sim(seed, drop=0.3)
    assert o.dropped > 0


@pytest.mark.parametrize("seed", range(2))
def test_node_death_at_each_step(seed):
    lost = 0
    for k in range(60):
        o = run_sim(seed * 1000 + k, steps=60, drop=0.1, kill_at=k)
        lost += bool(o.dead)
    assert lost == 60


def finish_and_check(o):
    for _ in range(10_000):               # let everything finish
        if not o.pending:
            break
        o.finish_one()
        o.validate()
    assert not o.pending, o.pending       # no re-run waits on something never made
    for oid in list(o.refs):
        st = o.table.status(oid)
        assert st in (own.Status.OWNED_READY, own.Status.OWNED_FAILED), (oid, st)
        if st is own.Status.OWNED_FAILED:   # lost for good, or an argument was
            assert o.failed, oid
    while o.refs:
        o.drop()
        o.validate()
    assert o.table.is_empty(), o.table.stats()
    assert o.lineage.stats()["lineages"] == 0 and o.lineage.stats()["lineage_bytes"] == 0
    assert not o.specs
