"""Where a cancel's KeyboardInterrupt may land (executor.in_task_code): only
in a task's own code, below the executor's call of the task, never while
gdfut's runtime is on the stack in between (its state could be left half
changed) and never in the executor's own frame (nothing would catch it)."""
import sys
from types import SimpleNamespace

from gdfut import serialization as ser
from gdfut.executor import Executor, in_task_code


def run_as_task(fn):
    """Call fn the way the worker calls a task, with a stand-in executor."""
    fake = SimpleNamespace(
        resolve_args=lambda task: ([], {}),
        package_returns=lambda task, result: [],
        error_returns=lambda task, err: [],
        wrap_error=lambda task, exc: exc,
        rt=SimpleNamespace(io=SimpleNamespace(post=lambda *a: None),
                           device=SimpleNamespace(release_task=lambda tid: None)),
        send_done=None)
    task = SimpleNamespace(cancelled=False, name="t", tid=b"t" * 16)
    Executor.call_and_reply(fake, task, fn)


def test_the_tasks_own_code_may_be_interrupted():
    seen = []

    def helper():
        seen.append(in_task_code(sys._getframe()))

    def task_body():
        seen.append(in_task_code(sys._getframe()))
        helper()

    run_as_task(task_body)
    assert seen == [True, True]


def test_user_code_called_back_from_the_runtime_is_not_interrupted():
    seen = []

    class Reduces:
        def __reduce__(self):
            seen.append(in_task_code(sys._getframe()))   # gdfut.serialization is below
            return (int, (1,))

    run_as_task(lambda: ser.serialize(Reduces()))
    assert seen == [False]


def test_outside_a_task_nothing_is_interrupted():
    assert not in_task_code(sys._getframe())
    assert not in_task_code(None)


def test_a_task_inside_an_import_is_not_interrupted(tmp_path, monkeypatch):
    """A cancel that lands in importlib's frames can leave the interpreter's
    import lock held (seen: a cancelled gdfut.data task's worker whose device
    export threads then hung forever in their first import), so a task that
    is importing a module is interrupted only once the import is done."""
    seen = []
    (tmp_path / "gdfut_probe_import_mod.py").write_text(
        "import sys\nCALLBACK(sys._getframe())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import builtins
    monkeypatch.setattr(builtins, "CALLBACK", lambda f: seen.append(in_task_code(f)),
                        raising=False)

    def task_body():
        import importlib
        importlib.import_module("gdfut_probe_import_mod")
        seen.append(in_task_code(sys._getframe()))

    run_as_task(task_body)
    sys.modules.pop("gdfut_probe_import_mod", None)
    assert seen == [False, True]
