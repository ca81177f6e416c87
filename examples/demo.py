"""The quick-start demo: tasks, zero-copy objects and an actor on a local cluster."""
import time

import numpy as np

import gdfut

t0 = time.perf_counter()
gdfut.init()                      # embedded default: head + node daemon + workers here
print(f"cluster up in {time.perf_counter() - t0:.2f} s")


@gdfut.remote
def add(a, b):
    return a + b


@gdfut.remote
class Counter:
    def __init__(self):
        self.n = 0

    def incr(self, k=1):
        self.n += k
        return self.n


x = gdfut.put(np.ones(10**8))     # 800 MB in host shared memory, written once
r = add.remote(x, 1)              # returns a future at once; x passed by reference
y = gdfut.get(r)
print("add(x, 1)[:3] =", y[:3], "| read-only zero-copy view:", not y.flags.writeable)
c = Counter.options(name="c").remote()
print("counter:", gdfut.get([c.incr.remote() for _ in range(10)]))   # ordered: 1..10

t1 = time.perf_counter()
refs = [add.remote(i, i) for i in range(10_000)]
assert gdfut.get(refs) == [2 * i for i in range(10_000)]
print(f"10,000 tasks in {time.perf_counter() - t1:.2f} s")
del x, r, y, refs
gdfut.shutdown()                  # stops every process it started, frees all shared memory
print("shut down cleanly")
