"""Task bodies shipped to workers.

They live in their own module, with no imports, so that a worker unpickling
them (by reference, ``bench.tasks.noop``) loads nothing but this file, and so
that W6's cold start does not pay for numpy or the harness.
"""


def noop():
    return None


def inc(x):
    return x + 1


def array_sum(a):
    # ``a`` arrives already resolved (ObjectRef/Future argument) as an ndarray.
    return float(a.sum())


def submit_noops(module_name, n):
    """A second owner: this task submits n no-ops from its worker (W1b)."""
    import importlib
    rt = importlib.import_module(module_name)
    remote_noop = rt.remote(noop)
    refs = [remote_noop.remote() for _ in range(n)]
    results = rt.get(refs)
    return sum(1 for r in results if r is None)
