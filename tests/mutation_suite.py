"""Bookkeeping of the exercises' mutation suite (tests/test_exercises_ch*.py): answers written as a
student would from the task texts alone, registered with ``@wrong`` (must be refused) or
``@right`` (an alternative correct answer: must pass)."""

from capslib import exercises as E


def registry():
    """``WRONG, RIGHT, wrong, right`` for one test module: two lists and their decorators.
    ``wrong(ex_id, expect)``: expect is None (any refusal), a mistake name, or ("not", names…):
    refused, but not under those names."""
    WRONG, RIGHT = [], []

    def wrong(ex_id, expect=None):
        def deco(fn):
            WRONG.append((ex_id, fn.__name__, fn, expect))
            return fn
        return deco

    def right(ex_id):
        def deco(fn):
            RIGHT.append((ex_id, fn.__name__, fn))
            return fn
        return deco

    return WRONG, RIGHT, wrong, right


def run_wrong(ex_id, fn, expect):
    v = getattr(E, E.exercise(ex_id).checker)(fn, quiet=True)
    assert not v and v.status != "correct", v.message
    if isinstance(expect, str):
        assert v.mistake == expect, v.message
    elif isinstance(expect, tuple):
        assert v.mistake not in expect[1:], v.message
    return v


def run_right(ex_id, fn):
    v = getattr(E, E.exercise(ex_id).checker)(fn, quiet=True)
    assert v.status == "correct", v.message
