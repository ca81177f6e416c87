"""gdfut benchmark harness: the bench/README.md workloads on gdfut, Ray and Dask.

Kept import-free on purpose: worker processes import ``bench.tasks`` to run
the task functions, and W6 imports ``bench.systems`` in a fresh interpreter,
so nothing heavy may be pulled in by the package itself.
"""
