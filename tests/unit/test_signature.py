"""Argument checks at .remote() time (gdfut.signature): TypeError for calls
that cannot bind, exactly as Python would refuse them, including the fast
path for positional-only calls."""
import pytest

from gdfut.signature import CallChecker, check_call, signature_of


def plain(a, b, c=3):
    pass


def star(a, *args, kw, opt=1, **kwargs):
    pass


def pos_only(a, /, b=2):
    pass


def no_args():
    pass


def checker(fn):
    return CallChecker(signature_of(fn), f"{fn.__name__}.remote()")


@pytest.mark.parametrize("fn,args,kwargs", [
    (plain, (1,), {}),                     # missing b
    (plain, (1, 2, 3, 4), {}),             # too many
    (plain, (1, 2), {"d": 1}),             # unexpected keyword
    (plain, (1, 2), {"a": 1}),             # a given twice
    (star, (1,), {}),                      # required keyword-only kw missing
    (star, (), {"kw": 1}),                 # a missing
    (pos_only, (), {"a": 1}),              # positional-only passed by keyword
    (no_args, (1,), {}),
])
def test_calls_python_refuses_are_refused(fn, args, kwargs):
    with pytest.raises(TypeError):
        fn(*args, **kwargs)
    with pytest.raises(TypeError, match=rf"{fn.__name__}\.remote\(\)"):
        checker(fn)(args, kwargs)


@pytest.mark.parametrize("fn,args,kwargs", [
    (plain, (1, 2), {}), (plain, (1, 2, 3), {}), (plain, (1,), {"b": 2}),
    (star, (1, 2, 3), {"kw": 1, "x": 2}), (star, (1,), {"kw": 1, "opt": 2}),
    (pos_only, (1,), {"b": 3}), (no_args, (), {}),
])
def test_calls_python_accepts_are_accepted(fn, args, kwargs):
    fn(*args, **kwargs)
    checker(fn)(args, kwargs)


def test_methods_skip_self_and_unknown_signatures_are_not_checked():
    class A:
        def m(self, x):
            pass
    sig = signature_of(A.m, skip_self=True)
    check_call(sig, (1,), {}, "A.m.remote()")
    with pytest.raises(TypeError, match="A.m.remote"):
        check_call(sig, (), {}, "A.m.remote()")
    check_call(None, (1, 2, 3), {"x": 1}, "anything")          # nothing to check against


def test_wire_form_round_trip_checks_the_same_calls():
    from gdfut.signature import from_wire, to_wire

    def f(a, b=1, *args, c, d=2, **kw):
        pass
    sig = from_wire(to_wire(signature_of(f)))
    check = CallChecker(sig, "f.remote()")
    check((1,), {"c": 3})
    check((1, 2, 3, 4), {"c": 3, "e": 5})
    with pytest.raises(TypeError, match=r"f\.remote\(\).*'c'"):
        check((1,), {})
    assert to_wire(None) is None and from_wire(None) is None
