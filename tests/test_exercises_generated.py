"""Wrong answers made mechanically from each exercise's own solution, one kind per rule of the issue:

- stale results: the solution behind a cache keyed on the inputs' shapes;
- input mutation: the solution, then a change to its first array input in place;
- wrong defaults: the solution with another default for each defaulted argument;
- return types: the solution's value as a float where the task says int, a list where it says a
  tuple, an array of shape (1,) where it says one number, a list where it says an array, float16.

Every one must be refused (zero false passes), and for the exercise it was made from, by the rule
it breaks. The chapters' hand-written wrong and alternative correct answers are in
tests/test_exercises_ch*.py.
"""

import inspect

import numpy as np
import pytest

from capslib import exercises as E
from capslib.exercises import framework as F
from test_exercises import solution

EXERCISES = list(E.EXERCISES.values())


def _key(x):
    return x.shape if hasattr(x, "shape") else repr(x)


def stale_by_shape(sol):
    cache = {}

    def my_answer(*args):
        key = tuple(_key(a) for a in args)
        if key not in cache:
            cache[key] = sol(*args)
        return cache[key]
    return my_answer


def mutates_first_array(sol):
    def my_answer(*args):
        out = sol(*args)
        out = tuple(np.array(o) if hasattr(o, "shape") else o for o in out) if isinstance(out, tuple) \
            else (np.array(out) if isinstance(out, np.ndarray) else out)
        for a in args:
            if isinstance(a, np.ndarray):
                a[...] = a[::-1] if a.ndim else -a             # the caller's array, changed
                break
        return out
    return my_answer


def with_default(sol, name, value):
    names = list(inspect.signature(sol).parameters)

    def my_answer(*args):
        bound = dict(zip(names, args))
        bound.setdefault(name, value)
        return sol(**bound)
    return my_answer


WRONG_DEFAULTS = {
    "stride": 2, "padding": 1, "position": 1, "axis": 1, "height": 32, "width": 32, "bytes_per_number": 8,
    "num_classes": 47, "iterations": 2, "bias": "a constant 0.1", "image_shape": (32, 32, 3), "conv_filters": 128,
    "primary_types": 16, "primary_dim": 4, "digit_dim": 8, "digit_bias": True, "weight": 0.005,
    "drop_remainder": True, "n_images": 10000, "batch_size": 100, "decay_steps": 1000,
}


def _wrong_default(ex, name):
    value = WRONG_DEFAULTS[name]
    if name == "bias":
        def my_routing(u_hat, iterations=3, bias="a constant 0.1"):
            if isinstance(bias, str):
                bias = np.full(u_hat.shape[2:], 0.1, "float32")
            return solution(ex)(u_hat, iterations, bias)
        return my_routing
    return with_default(solution(ex), name, value)


def _retyped(ex):
    """The solution's answer in a type the task does not ask for: [(name, function)]."""
    sol, spec = solution(ex), ex.returns
    if isinstance(spec, F.Int):
        return [("a float", lambda *a: float(sol(*a))), ("a 0-d array", lambda *a: np.array(sol(*a))),
                ("a string", lambda *a: str(sol(*a)))]
    if isinstance(spec, F.Number):
        return [("an array of shape (1,)", lambda *a: np.array([sol(*a)])), ("a list", lambda *a: [sol(*a)])]
    if isinstance(spec, F.Array):
        return [("a list", lambda *a: np.asarray(sol(*a)).tolist()),
                ("float16", lambda *a: np.asarray(sol(*a)).astype(np.float16))]
    if isinstance(spec, F.Tuple):
        return [("a list", lambda *a: list(sol(*a))), ("an array", lambda *a: np.array(sol(*a)))] \
            if all(isinstance(i, F.Int) for i in spec.items) else \
            [("a list", lambda *a: list(sol(*a))), ("float16 items", lambda *a: tuple(
                np.asarray(x).astype(np.float16) for x in sol(*a)))]
    if isinstance(spec, F.Dict):
        item = next(iter(spec.keys.values()))
        if isinstance(item, F.ShapeTuple):
            return [("lists for shapes", lambda *a: {k: list(v) for k, v in sol(*a).items()})]
        return [("floats for counts", lambda *a: {k: float(v) for k, v in sol(*a).items()})]
    raise AssertionError(spec)


CASES = []
for ex in EXERCISES:
    if ex.array_inputs:
        CASES.append((ex, "stale_by_shape", lambda ex=ex: stale_by_shape(solution(ex)), ("stale_result",)))
        CASES.append((ex, "mutates_its_input", lambda ex=ex: mutates_first_array(solution(ex)), ("input_modified",)))
    for name in ex.defaults():
        CASES.append((ex, f"default_{name}", lambda ex=ex, name=name: _wrong_default(ex, name),
                      ("wrong_default", "default_missing")))
    for what, fn in _retyped(ex):
        CASES.append((ex, f"returns_{what.replace(' ', '_')}", lambda fn=fn: fn, ("wrong_type", "low_precision")))


@pytest.mark.parametrize("ex,name,make,expected", CASES, ids=[f"{ex.id}-{name}" for ex, name, _, _ in CASES])
def test_generated_wrong_answer_is_refused(ex, name, make, expected):
    v = getattr(E, ex.checker)(make(), quiet=True)
    assert not v and v.status != "correct", v.message
    assert v.mistake in expected, v.message


def test_suite_size():
    assert len(CASES) >= 70
