"""A handle to a detached actor (no ``max_restarts``: the head holds no spec
for it) that its creator passed to another process keeps working after the
creator exited, whether that process had called the actor before or not
(issue 9, point 5). The cluster is started with the CLI; it is stopped in
``finally`` with a check that no process of the session is left.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

import gdfut
from helpers import REPO, running_cli_cluster

CREATOR = r"""
import sys
import gdfut
gdfut.init(address=sys.argv[1], session_dir=sys.argv[2], namespace="app")

@gdfut.remote
class Counter:
    def __init__(self, start):
        self.n = start
    def inc(self):
        self.n += 1
        return self.n

@gdfut.remote
class Holder:
    def keep(self, handles, call_now):
        self.counter = handles[0]          # a handle owned by the creator
        return gdfut.get(self.counter.inc.remote()) if call_now else 0
    def call(self):
        return gdfut.get(self.counter.inc.remote(), timeout=60)

c = Counter.options(lifetime="detached").remote(10)     # unnamed
called = Holder.options(name="called", lifetime="detached").remote()
fresh = Holder.options(name="fresh", lifetime="detached").remote()
assert gdfut.get(called.keep.remote([c], True)) == 11
assert gdfut.get(fresh.keep.remote([c], False)) == 0
print("ok", flush=True)
"""


@pytest.fixture
def cli_cluster(tmp_path):
    with running_cli_cluster(tmp_path) as cluster:
        yield cluster


def test_a_handle_passed_out_by_the_creator_works_after_it_exited(cli_cluster):
    out = subprocess.run([sys.executable, "-c", CREATOR, cli_cluster.address,
                          cli_cluster.session_dir], cwd=REPO, capture_output=True, text=True,
                         timeout=90)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
    gdfut.init(address=cli_cluster.address, session_dir=cli_cluster.session_dir,
               namespace="app")
    called, fresh = gdfut.get_actor("called"), gdfut.get_actor("fresh")
    assert gdfut.get(called.call.remote(), timeout=60) == 12    # it had located the actor
    assert gdfut.get(fresh.call.remote(), timeout=60) == 13     # it asks where it is now
    gdfut.kill(called)
    gdfut.kill(fresh)
