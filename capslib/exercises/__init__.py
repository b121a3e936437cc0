"""Exercises for "CapsNet, shape by shape": checkers that run your function and say what is wrong.

Every exercise in the book is a short task, a stub you edit, and a check under it::

    def my_squash(s, axis=-1):
        raise NotImplementedError          # ← replace with your code

    check_squash(my_squash)

A checker calls your function on several inputs — batch 1 and odd batches, other sizes, zero and
short capsules — each twice with the same shapes and new values, and once with the defaulted
arguments left out; it compares with capslib (or a float64 reference written from the paper) and
prints one verdict:

    ✓ Correct                     right on every input
    … not implemented yet         the stub still raises NotImplementedError; shows what it expects
    ✗ Not yet: <named mistake>    a typical mistake, recognised by name, with a hint
    ✗ Not yet: wrong shape / wrong values / NaN / your function raised …

It also refuses answers that change their inputs in place, keep state between calls, return another
type than the task states, or break an instruction of the task. Checkers never raise (an exception
in your code is reported with the input that triggered it), so a notebook always runs to the end.
They print and return ``None``; ``quiet=True`` prints nothing and returns the :class:`Verdict`::

    v = check_squash(my_squash, quiet=True)
    v.status    # "correct" | "not_implemented" | "mistake" | "wrong" | "error"
    v.mistake   # the name of the recognised mistake, e.g. "nan_gradient_at_zero", or None
    v.message   # the text a plain call prints

Layout: :mod:`.framework` (how a checker calls, compares and names), one module per chapter
(:mod:`.ch02_convolutions` … :mod:`.ch07_training`), :mod:`.book` (the notebook cells made from the
catalogue). :data:`EXERCISES` lists every exercise in book order; ``python -m capslib.exercises``
prints the draft of every cell (book/_exercise_cells.md).
"""

from .framework import EXERCISES, Exercise, Mistake, Verdict, exercise  # noqa: F401  (registry first)
from .ch02_convolutions import check_conv_output_size, check_receptive_field
from .ch03_primary_capsules import check_port_capsules, check_primary_caps_shape, check_squash, check_to_capsules
from .ch04_predictions import (check_capsnet_shapes, check_predictions, check_predictions_broadcast,
                               check_tiled_W_bytes)
from .ch05_routing import (check_coupling_map, check_port_routing, check_port_squash, check_routing,
                           check_routing_iteration)
from .ch06_losses_and_decoder import (check_capsule_lengths, check_decoder_sizes, check_margin_loss_grad,
                                      check_mask_by_label, check_mask_by_length, check_parameter_counts,
                                      check_reconstruction_loss)
from .ch07_training import check_learning_rate, check_margin_loss, check_steps_per_epoch
from .book import draft_markdown, exercise_cells, exercises_page_markdown, task_markdown

check_digit_caps_shapes = check_capsnet_shapes      # the old name of exercise 4.4's checker

__all__ = [
    "Verdict", "Exercise", "Mistake", "EXERCISES", "exercise", "exercise_cells", "task_markdown",
    "draft_markdown", "exercises_page_markdown",
    "check_conv_output_size", "check_receptive_field",
    "check_to_capsules", "check_port_capsules", "check_squash", "check_primary_caps_shape",
    "check_predictions", "check_tiled_W_bytes", "check_predictions_broadcast", "check_capsnet_shapes",
    "check_digit_caps_shapes",
    "check_routing_iteration", "check_routing", "check_coupling_map", "check_port_squash", "check_port_routing",
    "check_capsule_lengths", "check_margin_loss_grad", "check_mask_by_label", "check_mask_by_length",
    "check_decoder_sizes", "check_parameter_counts", "check_reconstruction_loss",
    "check_steps_per_epoch", "check_learning_rate", "check_margin_loss",
]
