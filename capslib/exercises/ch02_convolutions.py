"""Chapter 2, convolutions: the output-size rule with padding, and which pixels a unit sees."""

from __future__ import annotations

from functools import lru_cache

from .framework import Case, Exercise, Int, Mistake, Tuple, register

# =========================================================================== 2.1 the output size


@lru_cache(maxsize=None)
def _keras_conv_size(size, kernel, stride, padding):
    import keras
    shape = keras.layers.Conv2D(1, kernel, strides=stride).compute_output_shape(
        (1, size + 2 * padding, size + 2 * padding, 1))
    return int(shape[1])


_CONV_ROWS = [(28, 9, 1, 0), (20, 9, 2, 0), (28, 3, 1, 1), (21, 9, 2, 0), (8, 3, 2, 0), (32, 5, 3, 2),
              (7, 7, 1, 0), (10, 3, 2, 1), (7, 5, 3, 1), (20, 9, 4, 1), (11, 4, 3, 2), (96, 9, 2, 3),
              (13, 5, 4, 1), (5, 5, 2, 2), (40, 9, 3, 4)]


def _conv_cases(rng):
    cases = [Case((n, k, s, p), f"size={n}, kernel={k}, stride={s}, padding={p}") for n, k, s, p in _CONV_ROWS]
    cases += [Case((28, 9, 1, 0), "size=28, kernel=9 (stride and padding left to their defaults)", npass=2),
              Case((30, 4, 1, 0), "size=30, kernel=4 (stride and padding left to their defaults)", npass=2),
              Case((20, 9, 2, 0), "size=20, kernel=9, stride=2 (padding left to its default)", npass=3)]
    return cases


check_conv_output_size = register(Exercise(
    id="2.1", slug="conv-output-size", title="The conv output size, with padding", chapter="02_convolutions",
    section="How big is the output?", func="my_conv_output_size", checker="check_conv_output_size",
    signature="my_conv_output_size(size, kernel, stride=1, padding=0)",
    inputs=[("size", "int", "input height (= width)"), ("kernel", "int", "k"), ("stride", "int", "s"),
            ("padding", "int", "p zeros added on each side")],
    returns=Int(), returns_dims="the output height (= width)",
    reference_name="keras.layers.Conv2D(...).compute_output_shape on the zero-padded input",
    make_cases=_conv_cases, reference=_keras_conv_size, twins=False,
    mistakes=[
        Mistake("no_plus_one",
                "you count the steps between window positions, not the positions. A 9-wide window in 28 "
                "pixels can start at 0, 1, …, 19: that is 20 positions, (28 − 9)/1 + 1. Add the + 1 for "
                "the window at position 0.",
                wrong=lambda n, k, s=1, p=0: (n + 2 * p - k) // s),
        Mistake("ceil_not_floor",
                "you round the division up. Rounding up counts one more window that would hang off the edge "
                "of the (padded) input; a convolution drops it: use // (floor).",
                wrong=lambda n, k, s=1, p=0: -(-(n + 2 * p - k) // s) + 1),
        Mistake("padding_once",
                "padding adds p zeros on *both* sides of the input, so the padded size is size + 2·padding, "
                "not size + padding.",
                wrong=lambda n, k, s=1, p=0: (n + p - k) // s + 1),
        Mistake("padding_outside_the_floor",
                "you divided the unpadded room by the stride and added the padding afterwards, rounding each "
                "part on its own. The window slides over the *padded* input: the room it can move is "
                "size + 2·padding − kernel, and only that whole room is divided by the stride and floored.",
                wrong={"+ 2p after the division": lambda n, k, s=1, p=0: (n - k) // s + 1 + 2 * p,
                       "+ 2p // s after the division": lambda n, k, s=1, p=0: (n - k) // s + 1 + (2 * p) // s}),
        Mistake("stride_ignored",
                "your answer ignores the stride. With stride s the window jumps s pixels at a time, so the room "
                "it can move, size + 2·padding − kernel, is divided by s.",
                wrong=lambda n, k, s=1, p=0: n + 2 * p - k + 1),
    ],
    task=("The chapter's rule, $\\lfloor (\\text{in} - k)/s \\rfloor + 1$, is for convolutions without padding. "
          "Write `my_conv_output_size(size, kernel, stride=1, padding=0)`: the height (= width) of a "
          "convolution's output for a square input of `size` pixels, a `kernel`×`kernel` window moved `stride` "
          "pixels at a time, and `padding` zeros added on **each** side of the input first. CapsNet's "
          "convolutions give 28 → 20 and 20 → 6; a 3×3, stride-2 convolution with padding 1 takes 10 pixels to "
          "5. Work out where the padding goes before you write code: inside the floor, or outside?"),
    stub='''def my_conv_output_size(size, kernel, stride=1, padding=0):
    """Output height of a convolution: ints in, one int out. (28, 9, 1, 0) -> 20; (10, 3, 2, 1) -> 5."""
    raise NotImplementedError''',
    solution='''def my_conv_output_size(size, kernel, stride=1, padding=0):
    """Output height of a convolution: ints in, one int out. (28, 9, 1, 0) -> 20; (10, 3, 2, 1) -> 5."""
    room = size + 2 * padding - kernel      # how far the window's first pixel can move in the padded input
    return room // stride + 1               # the starts 0, s, 2s, ... that fit, counting 0''',
    explanation=("Padding makes the input `size + 2·padding` wide *before* the window slides, so it belongs "
                 "inside the floor: $\\lfloor (n + 2p - k)/s \\rfloor + 1$. Rounding the padding separately "
                 "(`(n − k)//s + 1 + 2p//s`) agrees with it only while the two remainders add up to less than "
                 "the stride: (20, 9, 4, 1) gives 4, not 3."),
    transfer="adds padding, which the chapter's rule lacks, and asks where it goes relative to the floor",
    seed=21,
))


# =========================================================================== 2.2 which pixels a unit sees


def _window_reference(layers, position=0):
    """Trace the interval of input pixels that feed unit `position` of the last layer back, layer by
    layer: a unit at p of a layer (k, s) reads units p·s … p·s + k − 1 of the layer below."""
    lo, hi = position, position
    for k, s in reversed(list(layers)):
        lo, hi = lo * s, hi * s + k - 1
    return (lo, hi)


def _rf_and_jumps(layers):
    r, j, jumps = 1, 1, [1]
    for k, s in layers:
        r, j = r + (k - 1) * j, j * s
        jumps.append(j)
    return r, jumps


def _window_own_stride(layers, position=0):
    r, j = 1, 1
    for k, s in layers:
        j = j * s
        r = r + (k - 1) * j
    return (position * j, position * j + r - 1)


def _window_jump_below(layers, position=0):
    r, jumps = _rf_and_jumps(layers)
    start = position * jumps[-2]
    return (start, start + r - 1)


def _window_exclusive(layers, position=0):
    r, jumps = _rf_and_jumps(layers)
    return (position * jumps[-1], position * jumps[-1] + r)


def _window_size(layers, position=0):
    r, jumps = _rf_and_jumps(layers)
    return (position * jumps[-1], r)


def _window_unscaled(layers, position=0):
    r, _ = _rf_and_jumps(layers)
    return (position, position + r - 1)


def _window_no_strides(layers, position=0):
    r = 1 + sum(k - 1 for k, _ in layers)
    return (position, position + r - 1)


_WINDOW_ROWS = [([(9, 1), (9, 2)], 0), ([(9, 1), (9, 2)], 2), ([(9, 1), (9, 2)], 5), ([(9, 2), (9, 1)], 3),
                ([(3, 1), (3, 1), (3, 1)], 4), ([(3, 2), (3, 2), (3, 2)], 1), ([(7, 2), (3, 2), (3, 1)], 2),
                ([(5, 1), (2, 2), (3, 1), (2, 2), (3, 1)], 3), ([(4, 3)], 2), ([(3, 2), (5, 3)], 4)]


def _window_cases(rng):
    cases = [Case((layers, p), f"layers={layers}, position={p}") for layers, p in _WINDOW_ROWS]
    cases += [Case(([(9, 1), (9, 2)], 0), "layers=[(9, 1), (9, 2)] (position left to its default)", npass=1),
              Case(([(3, 2), (5, 1)], 0), "layers=[(3, 2), (5, 1)] (position left to its default)", npass=1)]
    return cases


check_receptive_field = register(Exercise(
    id="2.2", slug="receptive-field", title="A shape puzzle: which pixels does a unit see?",
    chapter="02_convolutions", section="What one unit sees: receptive fields", func="my_receptive_field",
    checker="check_receptive_field", signature="my_receptive_field(layers, position=0)",
    inputs=[("layers", "list of (kernel, stride)", "from the image up, no padding"),
            ("position", "int", "a unit of the last layer, along one axis")],
    returns=Tuple([Int(), Int()], "a `tuple` `(first, last)` of two ints"),
    returns_dims="the first and the last input pixel (inclusive, along one axis) that reach that unit",
    reference_name="the input pixels that reach the unit, traced back layer by layer",
    make_cases=_window_cases, reference=_window_reference, twins=False,
    mistakes=[
        Mistake("jump_below_for_the_start",
                "your window has the right size but starts in the wrong place for position > 0: you spaced the "
                "last layer's units by the jump of the layer *below* it. Its own stride spaces its outputs, so "
                "neighbouring units of the last layer are j = (product of *all* strides) pixels apart, and unit p "
                "starts at pixel p·j. (The receptive field r uses the jump below; the spacing uses the jump "
                "including the last stride.)",
                wrong=_window_jump_below),
        Mistake("own_stride",
                "your window is too wide: you multiplied a layer's (kernel − 1) by a jump that already includes "
                "that layer's *own* stride. A layer's stride only spaces out its outputs, so it enters the "
                "receptive field of the layer after it: r += (k − 1)·j; then j *= s.",
                wrong=_window_own_stride),
        Mistake("last_is_exclusive",
                "your last pixel is one too far: a window of r pixels starting at `first` ends at first + r − 1 "
                "(the task's `last` is inclusive).",
                wrong=_window_exclusive),
        Mistake("returned_the_size",
                "your second number is the receptive field's size r; the task asks for the *last* pixel, "
                "first + r − 1.",
                wrong=_window_size),
        Mistake("position_not_scaled",
                "your window starts at pixel `position`: units of the last layer are not 1 pixel apart but j "
                "pixels (the product of the strides), so unit p starts at p·j.",
                wrong={"size right": _window_unscaled, "strides ignored too": _window_no_strides}),
    ],
    task=("The chapter computed the receptive field $r$ of a unit and drew it at pixel `row·jump`. Generalise "
          "that: write `my_receptive_field(layers, position=0)`. Given convolutions without padding as a list of "
          "`(kernel, stride)` from the image up, return the pixels (along one axis) that unit number `position` "
          "of the **last** layer sees, as `(first, last)`, both inclusive. CapsNet's `[(9, 1), (9, 2)]` gives "
          "`(0, 16)` for position 0 and `(4, 20)` for position 2. Which jump spaces the units of the last layer: "
          "the one with its own stride, or the one without?"),
    stub='''def my_receptive_field(layers, position=0):
    """layers: [(kernel, stride), ...] from the image up -> (first, last) input pixels of unit `position`."""
    raise NotImplementedError''',
    solution='''def my_receptive_field(layers, position=0):
    """layers: [(kernel, stride), ...] from the image up -> (first, last) input pixels of unit `position`."""
    r, j = 1, 1                    # one pixel sees itself; neighbouring pixels are 1 apart
    for kernel, stride in layers:
        r = r + (kernel - 1) * j   # k taps, spaced j pixels apart, on top of what each tap sees
        j = j * stride             # this layer's stride spaces out *its* outputs
    first = position * j           # units of the last layer are j pixels apart (all strides)
    return (first, first + r - 1)''',
    explanation=("Two jumps meet here. The size $r$ of the window uses the jump of the layer *below* the last one "
                 "(its taps are units of that layer), while the spacing of the last layer's own units uses the "
                 "jump *including* its stride. For CapsNet's primary conv: $r = 17$, units 2 pixels apart, so "
                 "unit 5 sees pixels 10–26."),
    transfer="asks for the window of any unit, which needs the jump including the last stride, not only r",
    seed=22,
))
