"""Seeded simulation of the borrower protocol across N processes.

Each simulated process keeps its own ReferenceTable. Instructions become
messages on per-pair FIFO queues, delivered in a random interleaving (acks
too). Random programs put objects (with nested refs), submit tasks with
top-level and nested arguments, return objects holding refs, read refs out
of objects (get), pass refs on, keep them past a task, and drop them.

Ground truth: the oracle knows which processes really hold each ref
(program refs, pending task arguments, running tasks, replies in flight,
and, transitively, refs nested in the value of a reachable object). After
every step: no freed object is reachable and every table validates. At the
end, after everyone dropped everything and every message was delivered:
every object was freed exactly once, every lineage released exactly once,
every table is empty and no message hit a freed object.

The death variant kills one process mid-run, at any step: also between its
Adds for a submitter and its reply (the registrations it made are settled,
not leaked). Messages it had sent are cut at a random point (its connections
broke: a suffix of each is dropped) and the death notice reaches each process
at a random time, so replies of the dead process can arrive after it. The
victim only executes tasks, puts values without nested refs and reads
objects (it never submits tasks), so that no surviving ref rests on it
through the failure paths the table bounds but does not close (see "Known
gaps" in the module doc of gdfut.ownership). ``test_death_at_each_step``
kills it at every step of a short run in turn.
"""
from __future__ import annotations

import random
from collections import Counter, deque
from dataclasses import dataclass, field

import pytest

from gdfut.ownership import (INLINE, ForgetBorrowed, FreeObject, ObjectLost, OwnerDied,
                             ReferenceTable, ReleaseLineage, SendAddBorrower, SendBorrowerSettled,
                             SendConfirmBorrower, SendRemoveBorrower, SendSettleBorrower, Status)

HEAD = b"head"


@dataclass
class Task:
    tid: bytes
    submitter: bytes
    executor: bytes
    top: list
    nested: list
    returns: list


@dataclass
class Run:
    task: Task
    pool: Counter = field(default_factory=Counter)    # refs the running task holds


class Sim:
    def __init__(self, seed: int, n: int = 4, steps: int = 300, kill: bool = False,
                 kill_at: int | None = None):
        self.rng = random.Random(seed)
        self.procs = [b"p%d" % i for i in range(n)]
        self.victim = self.procs[-1] if kill else None
        if kill_at is None:
            kill_at = self.rng.randrange(steps // 4, 3 * steps // 4) if kill else -1
        self.kill_at = kill_at
        self.steps = steps
        self.tables = {p: ReferenceTable(p) for p in self.procs}
        self.alive = set(self.procs)
        self.queues: dict[tuple, deque] = {}
        self.held = {p: Counter() for p in self.procs}      # program ObjectRefs
        self.pins = {p: Counter() for p in self.procs}      # outer refs of gets in progress
        self.pending = {p: {} for p in self.procs}          # submitter: tid -> Task
        self.running = {p: {} for p in self.procs}          # executor: tid -> Run
        self.outbox = {p: {} for p in self.procs}           # executor: tid -> reply (awaiting acks)
        self.owner: dict[bytes, bytes] = {}
        self.contents: dict[bytes, tuple] = {}              # values' nested refs
        self.ready: set = set()                             # values readable by holders
        self.task_returns: dict[bytes, list] = {}
        self.task_submitter: dict[bytes, bytes] = {}
        self.freed = Counter()
        self.released = Counter()
        self.tokens: dict[int, tuple] = {}                  # token -> (proc, dst, group)
        self.ids = 0
        self.delivered = 0
        self.settles_sent = 0

    # ------------------------------------------------------------ plumbing
    def new_id(self, prefix: bytes) -> bytes:
        self.ids += 1
        return prefix + b"%d" % self.ids

    def send(self, src, dst, msg):
        if dst not in self.alive:
            return                          # lost: nobody there to read it
        self.queues.setdefault((src, dst), deque()).append(msg)

    def do(self, p, instrs, value_landed: bool = False) -> list:
        """Carry out p's instructions in order; return the ack tokens."""
        tokens = []
        for ins in instrs:
            if isinstance(ins, FreeObject):
                assert self.owner[ins.oid] == p
                if value_landed and self.freed[ins.oid]:
                    continue                    # late value of a freed object: delete it
                self.freed[ins.oid] += 1
                assert self.freed[ins.oid] == 1, f"{ins.oid} freed twice"
            elif isinstance(ins, ReleaseLineage):
                assert self.task_submitter[ins.tid] == p
                assert all(self.freed[r] for r in self.task_returns[ins.tid])
                self.released[ins.tid] += 1
            elif isinstance(ins, SendAddBorrower):
                assert ins.owner == self.owner[ins.oid] != ins.borrower
                self.ids += 1
                tokens.append(self.ids)
                self.tokens[self.ids] = (p, ins.owner, None)
                self.send(p, ins.owner, ("add", ins.oid, ins.borrower, ins.n, self.ids, ins.via))
            elif isinstance(ins, ForgetBorrowed):
                assert self.tables[p].status(ins.oid) not in (Status.BORROWED, Status.OWNER_DIED), ins
            elif isinstance(ins, SendRemoveBorrower):
                assert ins.owner == self.owner[ins.oid] and ins.borrower == p
                self.send(p, ins.owner, ("rm", ins.oid, p, ins.n))
            elif isinstance(ins, SendConfirmBorrower):
                assert ins.owner == self.owner[ins.oid]
                self.send(p, ins.owner, ("confirm", ins.oid, ins.via))
            elif isinstance(ins, SendSettleBorrower):
                assert self.owner[ins.oid] == p and ins.via not in self.alive
                self.settles_sent += 1
                self.send(p, ins.borrower, ("settle", ins.oid, ins.via))
            elif isinstance(ins, SendBorrowerSettled):
                assert ins.via not in self.alive
                self.send(p, ins.owner, ("settled", ins.oid, ins.via))
            elif isinstance(ins, OwnerDied):
                assert ins.owner not in self.alive and self.owner[ins.oid] == ins.owner
            else:
                assert not isinstance(ins, ObjectLost)
                raise AssertionError(ins)
        return tokens

    def after_acks(self, tokens, then):
        if not tokens:
            then()
            return
        group = {"left": len(tokens), "then": then}
        for t in tokens:
            p, dst, _ = self.tokens[t]
            self.tokens[t] = (p, dst, group)

    def _token_done(self, token):
        _, _, group = self.tokens.pop(token)
        group["left"] -= 1
        if group["left"] == 0:
            group["then"]()

    # ------------------------------------------------------------ programs
    def held_oids(self, p):
        return sorted(o for o, c in self.held[p].items() if c > 0)

    def sample(self, items, k):
        return self.rng.sample(items, min(len(items), self.rng.randint(0, k)))

    def put(self, p):
        nested = [] if p == self.victim else self.sample(self.held_oids(p), 2)
        oid = self.new_id(b"o")
        self.owner[oid] = p
        t = self.tables[p]
        self.do(p, t.add_owned(oid, call_site="sim", contains=nested))
        self.do(p, t.add_local_ref(oid))
        self.do(p, t.object_ready(oid, 1, INLINE))
        self.contents[oid] = tuple(nested)
        self.ready.add(oid)
        self.held[p][oid] += 1

    def submit(self, p):
        others = sorted(self.alive - {p})
        if p == self.victim or not others:
            return
        held = self.held_oids(p)
        top = self.sample([o for o in held if o in self.ready], 2)
        nested = self.sample(held, 2)
        tid = self.new_id(b"t")
        returns = [self.new_id(b"r") for _ in range(self.rng.choice((1, 1, 2)))]
        task = Task(tid, p, self.rng.choice(others), top, nested, returns)
        t = self.tables[p]
        for r in returns:
            self.owner[r] = p
            self.do(p, t.add_owned(r, lineage=tid, call_site="sim"))
            self.do(p, t.add_local_ref(r))
            self.held[p][r] += 1
        self.do(p, t.task_submitted(tid, top + nested))
        self.task_returns[tid] = returns
        self.task_submitter[tid] = p
        self.pending[p][tid] = task
        self.send(p, task.executor, ("task", task))

    def drop(self, p):
        held = self.held_oids(p)
        if held:
            oid = self.rng.choice(held)
            self.held[p][oid] -= 1
            self.do(p, self.tables[p].remove_local_ref(oid))

    def get(self, p):
        """Read refs out of a ready object; keep it until registrations land."""
        outer = [o for o in self.held_oids(p) if o in self.ready and self.contents[o]]
        if not outer:
            return
        x = self.rng.choice(outer)
        t = self.tables[p]
        self.do(p, t.add_local_ref(x))          # pin: the value being read holds x
        self.pins[p][x] += 1
        got = list(self.contents[x])
        for c in got:
            self.do(p, t.add_local_ref(c, owner=self.owner[c]))

        def done():
            self.held[p].update(got)
            self.pins[p][x] -= 1
            self.do(p, t.remove_local_ref(x))
        self.after_acks(self.do(p, t.register_held_refs()), done)

    def start_task(self, w, task: Task):
        """Executor deserializes the arguments: nested refs and refs inside
        the values of top-level arguments."""
        t = self.tables[w]
        run = Run(task)
        for c in task.nested + [c for a in task.top for c in self.contents[a]]:
            self.do(w, t.add_local_ref(c, owner=self.owner[c]))
            run.pool[c] += 1
        self.running[w][task.tid] = run

    def finish_task(self, w):
        if not self.running[w]:
            return
        tid = self.rng.choice(sorted(self.running[w]))
        run = self.running[w].pop(tid)
        task, t = run.task, self.tables[w]
        failed = self.rng.random() < 0.15
        usable = sorted(set(run.pool) | set(self.held_oids(w)))
        results, instrs = [], []
        for r in task.returns:
            # No cycles: reference counting cannot collect them (nor can Ray's).
            acyclic = [c for c in usable if not self.reaches(c, r)]
            nested = [] if failed else self.sample(acyclic, 2)
            self.contents[r] = tuple(nested)
            instrs += t.returning_refs(r, task.submitter, nested)
            results.append((r, failed, [(c, self.owner[c]) for c in nested]))
        keep = self.sample(sorted(run.pool), 2)        # e.g. stored in actor state
        for c, k in run.pool.items():                  # the task's locals die
            for _ in range(k - (c in keep)):
                instrs += t.remove_local_ref(c)
        self.held[w].update(keep)
        instrs += t.register_held_refs()
        self.outbox[w][tid] = (task, results)

        def reply():
            self.outbox[w].pop(tid)
            self.send(w, task.submitter, ("reply", tid, results))
            for r in task.returns:
                self.do(w, t.return_sent(r))
        self.after_acks(self.do(w, instrs), reply)

    def reaches(self, start, target) -> bool:
        seen, stack = set(), [start]
        while stack:
            oid = stack.pop()
            if oid == target:
                return True
            if oid not in seen:
                seen.add(oid)
                stack.extend(self.contents.get(oid, ()))
        return False

    # ------------------------------------------------------------ delivery
    def deliver(self, src, dst):
        msg = self.queues[(src, dst)].popleft()
        if not self.queues[(src, dst)]:
            del self.queues[(src, dst)]
        if dst not in self.alive:
            return
        self.delivered += 1
        t, kind = self.tables[dst], msg[0]
        if kind == "task":
            self.start_task(dst, msg[1])
        elif kind == "add":
            _, oid, borrower, n, token, via = msg
            self.do(dst, t.borrow_added(oid, borrower, n, via=via))
            self.send(dst, src, ("ack", token, oid, borrower))
        elif kind == "ack":
            _, token, oid, borrower = msg
            if token in self.tokens:            # else given up when src died
                if borrower == dst:
                    self.do(dst, t.borrower_registered(oid))
                self._token_done(token)
        elif kind == "rm":
            _, oid, borrower, n = msg
            self.do(dst, t.borrow_removed(oid, borrower, n))
        elif kind == "confirm":
            self.do(dst, t.borrow_confirmed(msg[1], src, msg[2]))
        elif kind == "settle":
            self.do(dst, t.borrow_settle(msg[1], src, msg[2]))
        elif kind == "settled":
            self.do(dst, t.borrow_settled(msg[1], src, msg[2]))
        elif kind == "reply":
            self.on_reply(dst, msg[1], msg[2], src)
        elif kind == "died":
            self.on_died(dst, msg[1])
        else:
            raise AssertionError(msg)

    def on_reply(self, s, tid, results, executor):
        t = self.tables[s]
        if tid not in self.pending[s]:          # failed already: executor died
            for _, _, nested in results:
                self.do(s, t.return_discarded(nested, executor))
            return
        for r, failed, nested in results:
            self.do(s, t.return_received(r, nested, executor))
            if failed:
                self.do(s, t.object_failed(r, "error"))
            else:
                self.do(s, t.object_ready(r, 1, INLINE), value_landed=True)
            self.ready.add(r)
        self.do(s, t.task_finished(tid))
        del self.pending[s][tid]

    def on_died(self, p, dead):
        t = self.tables[p]
        self.do(p, t.process_died(dead))
        for tid, task in sorted(self.pending[p].items()):
            if task.executor == dead:           # fail it: nothing will come back
                for r in task.returns:
                    self.do(p, t.object_failed(r, "worker died"))
                    self.contents[r] = ()       # a late reply is discarded
                    self.ready.add(r)
                self.do(p, t.task_finished(tid))
                del self.pending[p][tid]
        for token, (src, dst, _) in sorted(self.tokens.items()):
            if src == p and dst == dead:        # no ack will come
                self._token_done(token)

    def kill(self, v):
        self.alive.discard(v)
        for key in [k for k in self.queues if k[1] == v]:
            del self.queues[key]
        for key in sorted(k for k in self.queues if k[0] == v):   # its connections broke
            q = self.queues[key]
            for _ in range(self.rng.randint(0, len(q))):
                q.pop()
            if not q:
                del self.queues[key]
        for token, (src, _, _) in list(self.tokens.items()):
            if src == v:
                del self.tokens[token]
        self.running[v].clear()
        self.outbox[v].clear()
        for p in sorted(self.alive):
            self.send(HEAD, p, ("died", v))

    # ------------------------------------------------------------ the oracle
    def reachable(self) -> set:
        roots = []
        for p in self.alive:
            roots += [o for o, c in self.held[p].items() if c > 0]
            roots += [o for o, c in self.pins[p].items() if c > 0]
            for task in self.pending[p].values():
                roots += task.top + task.nested
            for run in self.running[p].values():
                if run.task.submitter in self.alive:
                    roots += list(run.pool)
            for _, results in self.outbox[p].values():
                roots += [c for _, _, nested in results for c, _ in nested]
        for (_, dst), q in self.queues.items():
            for msg in q:
                # a reply for a task already failed (executor died) is discarded
                if msg[0] == "reply" and dst in self.alive and msg[1] in self.pending[dst]:
                    roots += [c for _, _, nested in msg[2] for c, _ in nested]
        seen, stack = set(), roots
        while stack:
            oid = stack.pop()
            if oid in seen:
                continue
            seen.add(oid)
            if self.owner[oid] in self.alive:   # a dead owner's values are gone
                stack.extend(self.contents.get(oid, ()))
        return seen

    def check(self):
        for p in self.alive:
            self.tables[p].validate()
        for oid in self.reachable():
            if self.owner[oid] in self.alive:
                assert not self.freed[oid], f"{oid} freed while reachable"

    # ------------------------------------------------------------ driving
    def step(self, programs: bool):
        procs = sorted(self.alive)
        queues = sorted(self.queues)
        if queues and self.rng.random() < 0.5:
            self.deliver(*self.rng.choice(queues))
            return
        p = self.rng.choice(procs)
        if programs:
            action = self.rng.choices(
                [self.put, self.submit, self.drop, self.get, self.finish_task],
                weights=[2, 3, 3, 1, 3])[0]
        else:
            action = self.rng.choice([self.drop, self.finish_task])
        action(p)

    def maybe_kill(self, i):
        # Any step: also with replies waiting for acks (outbox) and Adds for
        # its submitters landed, which are settled once it is dead.
        if i >= self.kill_at >= 0 and self.victim in self.alive:
            self.kill(self.victim)

    def busy(self) -> bool:
        return bool(self.queues or any(self.running[p] or self.held_oids(p)
                                       for p in self.alive))

    def run(self):
        for i in range(self.steps):
            self.maybe_kill(i)
            self.step(programs=True)
            self.check()
        for i in range(self.steps, 100_000):
            self.maybe_kill(i)
            if not self.busy():
                break
            self.step(programs=False)
            self.check()
        assert not self.busy(), "did not quiesce"
        self.final_checks()

    def final_checks(self):
        assert not self.tokens and not any(self.pending[p] for p in self.alive)
        assert not any(self.pins[p][o] for p in self.alive for o in self.pins[p])
        for p in self.alive:
            t = self.tables[p]
            t.validate()
            assert t.is_empty(), (p, t.summary())
            assert t.stats()["stale_messages"] == 0, t.stats()
        for oid, p in self.owner.items():
            if p in self.alive:
                assert self.freed[oid] == 1, (oid, p)
        for tid, s in self.task_submitter.items():
            if s in self.alive:
                assert self.released[tid] == 1, tid


@pytest.mark.parametrize("seed", range(12))
def test_protocol_sim(seed):
    sim = Sim(seed)
    sim.run()
    assert sim.delivered > 50 and len(sim.owner) > 30


@pytest.mark.parametrize("seed", range(16))
def test_protocol_sim_with_a_death(seed):
    sim = Sim(seed, n=5, kill=True)
    sim.run()
    assert sim.victim not in sim.alive


@pytest.mark.parametrize("seed", range(3))
def test_death_at_each_step(seed):
    """The victim dies at step 0, 1, 2...: every point of the protocol."""
    settles = 0
    for k in range(120):
        sim = Sim(seed * 1000 + k, n=4, steps=120, kill=True, kill_at=k)
        sim.run()
        assert sim.victim not in sim.alive
        settles += sim.settles_sent
    assert settles > 0          # the executor-died-before-its-reply path was taken
