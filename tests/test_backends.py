"""capslib on other Keras backends (JAX; PyTorch when installed).

Keras fixes its backend when it is first imported, so each backend runs in a subprocess with
KERAS_BACKEND set. The subprocess computes everything once and writes arrays and facts to
files; the tests below check them against the float64 NumPy references of conftest.py.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import (routing_gradient_reference, routing_reference_loop, routing_reference_np,
                      squash_reference_np, toy_dataset)

TOL = dict(rtol=1e-5, atol=1e-5)

SCRIPT = textwrap.dedent(
    r'''
    import json, math, os, sys, traceback
    import numpy as np

    work = sys.argv[1]
    import keras
    import capslib

    backend = keras.backend.backend()
    data = np.load(os.path.join(work, "inputs.npz"))
    arrays, facts = {}, {"backend": backend}
    to_np = keras.ops.convert_to_numpy

    def attempt(name, fn):
        try:
            fn()
        except Exception as e:            # recorded, so that one failure does not hide the rest
            facts[name + "_error"] = "".join(traceback.format_exception_only(type(e), e)).strip()

    def ops_():
        arrays["squash"] = to_np(capslib.squash(data["s"]))
        for r in (1, 3):
            v, c = capslib.dynamic_routing(data["u_small"], r, return_coupling=True)
            arrays[f"v_small_{r}"], arrays[f"c_small_{r}"] = to_np(v), to_np(c)
        arrays["v_bias"] = to_np(capslib.dynamic_routing(data["u_small"], 3, bias=data["bias"]))
        arrays["v_out_major"] = to_np(capslib.dynamic_routing(
            np.ascontiguousarray(data["u_small"].transpose(0, 2, 1, 3)), 3, out_major=True))
        v, c = capslib.dynamic_routing(data["u_real"], 3, return_coupling=True)
        arrays["v_real"], arrays["c_real"] = to_np(v), to_np(c)

    def squash_grad():
        w = data["w"]
        if backend == "jax":
            import jax, jax.numpy as jnp
            grad = jax.grad(lambda s: jnp.sum(capslib.squash(s) * w))
            g = lambda s: np.asarray(grad(s))
        elif backend == "torch":
            import torch
            def g(s):
                t = torch.tensor(s, requires_grad=True)
                (capslib.squash(t) * torch.tensor(w)).sum().backward()
                return t.grad.numpy()
        else:
            return
        facts["grad_finite"] = {}
        for log_mag in (None, -30, -20, -10, 0, 10, 20, 30):
            s = np.zeros_like(data["s_dir"]) if log_mag is None else data["s_dir"] * np.float32(10.0 ** log_mag)
            facts["grad_finite"][str(log_mag)] = bool(np.isfinite(g(s.astype("float32"))).all())

    def routing_grad():
        # d sum(v·w_v)/dû and /dbias, hand-written backward (default) and autodiff, 3 iterations.
        u, bias, w = data["u_small"], data["bias"], data["w_v"]
        for autodiff in (False, True):
            def loss(u_, b_):
                v = capslib.dynamic_routing(u_, 3, bias=b_, autodiff=autodiff)
                return keras.ops.sum(v * keras.ops.convert_to_tensor(w))
            if backend == "jax":
                import jax
                du, db = jax.jit(jax.grad(loss, argnums=(0, 1)))(u, bias)
                du, db = np.asarray(du), np.asarray(db)
            elif backend == "torch":
                import torch
                tu, tb = torch.tensor(u, requires_grad=True), torch.tensor(bias, requires_grad=True)
                loss(tu, tb).backward()
                du, db = tu.grad.numpy(), tb.grad.numpy()
            else:
                return
            tag = "autodiff" if autodiff else "hand"
            arrays[f"du_{tag}"], arrays[f"dbias_{tag}"] = du, db

    def routing_grad_more():
        # mixed precision, a keras.Variable as input, and (PyTorch) memory and second order
        u, bias, w = data["u_small"], data["bias"], data["w_v"]
        u_out = np.ascontiguousarray(u.transpose(0, 2, 1, 3))
        if backend == "jax":
            import jax, jax.numpy as jnp
            du16, db16 = jax.grad(lambda a, b: jnp.sum(capslib.dynamic_routing(a, 3, bias=b).astype("float32") * w),
                                  argnums=(0, 1))(jnp.asarray(u, jnp.bfloat16), bias)
            facts["bf16"] = [str(du16.dtype), str(db16.dtype)]
            arrays["dbias_bf16"] = np.asarray(db16)
            var = keras.Variable(u_out)
            g = jax.grad(lambda val: jnp.sum(jnp.square(capslib.dynamic_routing(val, 3, out_major=True))))(var.value)
            arrays["dvar"] = np.asarray(g)
        elif backend == "torch":
            import gc, weakref, torch
            a = torch.tensor(u, dtype=torch.bfloat16, requires_grad=True)
            b = torch.tensor(bias, requires_grad=True)
            (capslib.dynamic_routing(a, 3, bias=b).float() * torch.tensor(w)).sum().backward()
            facts["bf16"] = [str(a.grad.dtype).replace("torch.", ""), str(b.grad.dtype).replace("torch.", "")]
            arrays["dbias_bf16"] = b.grad.numpy()
            var = keras.Variable(u_out)
            capslib.dynamic_routing(var, 3, out_major=True).square().sum().backward()
            arrays["dvar"] = var.value.grad.numpy()
            # û is freed after the backward pass, as with autodiff, even while the loss is alive
            x = torch.tensor(u_out, requires_grad=True)
            u_hat = x * 1.0
            ref = weakref.ref(u_hat)
            loss = capslib.dynamic_routing(u_hat, 3, out_major=True).square().sum()
            del u_hat
            loss.backward()
            gc.collect()
            facts["u_hat_freed_after_backward"] = ref() is None
            x = torch.tensor(u, requires_grad=True)
            try:
                torch.autograd.grad(capslib.dynamic_routing(x, 3).sum(), x, create_graph=True)
                facts["second_order"] = None
            except NotImplementedError as e:
                facts["second_order"] = str(e)

    def model_():
        keras.utils.set_random_seed(0)
        m = capslib.CapsNet()
        facts["params"] = int(m.count_params())
        x = data["x"][:2]
        features = m.conv1(x)
        u = m.primary_caps(features)
        v, c = m.digit_caps(u, return_coupling=True)
        lengths, recon = m(x)
        facts["shapes"] = {
            "conv1": list(features.shape), "primary_conv": list(m.primary_caps.preactivation(features).shape),
            "primary_caps": list(u.shape), "u_hat": list(m.digit_caps.predictions(u).shape),
            "c": list(c.shape), "v": list(v.shape), "lengths": list(lengths.shape),
            "masked": list(m.mask(v).shape), "reconstructions": list(recon.shape),
        }
        facts["lengths_finite"] = bool(np.isfinite(to_np(lengths)).all())
        for name, bad in [("channels", np.zeros((2, 28, 28, 3), "float32")),
                          ("uint8", np.zeros((2, 28, 28, 1), "uint8")),
                          ("rank", np.zeros((2, 28, 28), "float32"))]:
            try:
                m(bad)
                facts[f"bad_{name}"] = None
            except capslib.ShapeError as e:
                facts[f"bad_{name}"] = str(e)
        try:
            capslib.margin_loss(np.array([1, 2]), np.zeros((2, 10), "float32"))
            facts["bad_labels"] = None
        except capslib.ShapeError as e:
            facts["bad_labels"] = str(e)

    def fit_():
        keras.utils.set_random_seed(0)
        m = capslib.CapsNet()
        m.compile(optimizer=keras.optimizers.Adam(1e-3), loss=capslib.margin_loss,
                  metrics=["categorical_accuracy"])
        x, y = data["x"][:8], data["y"][:8]
        before = [to_np(w).copy() for w in m.trainable_weights]
        history = m.fit(x, y, batch_size=8, epochs=1, verbose=0).history
        facts["fit_loss"] = [float(l) for l in history["loss"]]
        facts["weights_changed"] = sum(not np.array_equal(b, to_np(w)) for b, w in zip(before, m.trainable_weights))
        facts["n_weights"] = len(before)
        result = m.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
        v = m.encode(x)
        facts["eval_loss"] = float(result["loss"])
        facts["eval_by_hand"] = float(to_np(capslib.margin_loss(y, m.length(v)))) + float(
            to_np(capslib.reconstruction_loss(x, m.decode(v, y))))

    for name, fn in [("ops", ops_), ("squash_grad", squash_grad), ("routing_grad", routing_grad),
                     ("routing_grad_more", routing_grad_more), ("model", model_), ("fit", fit_)]:
        attempt(name, fn)
    np.savez(os.path.join(work, "outputs.npz"), **arrays)
    with open(os.path.join(work, "facts.json"), "w") as f:
        json.dump(facts, f)
    '''
)


def _inputs():
    rng = np.random.default_rng(42)
    x, y = toy_dataset(n=8, seed=3)
    direction = rng.normal(size=(3, 16))
    return {
        "s": (rng.normal(0, 1, (3, 10, 16)) * rng.choice([1e-3, 0.1, 1.0, 10.0, 1e3], (3, 10, 1))).astype("float32"),
        "s_dir": (direction / np.linalg.norm(direction, axis=-1, keepdims=True)).astype("float32"),
        "w": rng.normal(size=(3, 16)).astype("float32"),
        "u_small": rng.normal(0, 1, (2, 12, 4, 5)).astype("float32"),
        "bias": rng.normal(0, 0.5, (4, 5)).astype("float32"),
        "w_v": rng.normal(0, 1, (2, 4, 5)).astype("float32"),
        "u_real": (rng.normal(0, 0.05, (2, 1152, 10, 16)) + rng.normal(0, 0.02, (1, 1, 10, 16))).astype("float32"),
        "x": x,
        "y": y,
    }


def _run_backend(backend, work: Path):
    inputs = _inputs()
    np.savez(work / "inputs.npz", **inputs)
    (work / "run.py").write_text(SCRIPT)
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
               TF_CPP_MIN_LOG_LEVEL="2", TF_ENABLE_ONEDNN_OPTS="0")
    proc = subprocess.run([sys.executable, str(work / "run.py"), str(work)], env=env, capture_output=True,
                          text=True, timeout=600, cwd=str(Path(__file__).resolve().parents[1]))
    if proc.returncode != 0 or not (work / "facts.json").exists():
        pytest.fail(f"{backend} subprocess failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    facts = json.loads((work / "facts.json").read_text())
    outputs = dict(np.load(work / "outputs.npz"))
    return inputs, outputs, facts


BACKENDS = {"jax": "jax", "torch": "torch"}


@pytest.fixture(scope="module", params=["jax", "torch"])
def run(request, tmp_path_factory):
    backend = request.param
    if importlib.util.find_spec(BACKENDS[backend]) is None:
        pytest.skip(f"{backend} is not installed, so capslib cannot be checked on the {backend} backend")
    try:
        subprocess.run([sys.executable, "-c", f"import {BACKENDS[backend]}"], check=True, capture_output=True,
                       timeout=120)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"{backend} is installed but cannot be imported: {e.stderr.decode()[-300:]}")
    return _run_backend(backend, tmp_path_factory.mktemp(f"backend_{backend}"))


def _no_error(facts, name):
    assert f"{name}_error" not in facts, facts[f"{name}_error"]


def test_backend_is_the_one_asked_for(run, request):
    _, _, facts = run
    assert facts["backend"] == request.node.callspec.params["run"]


def test_squash_matches_reference(run):
    inputs, out, facts = run
    _no_error(facts, "ops")
    np.testing.assert_allclose(out["squash"], squash_reference_np(inputs["s"]), **TOL)


@pytest.mark.parametrize("iterations", [1, 3])
def test_routing_matches_loop_reference(run, iterations):
    inputs, out, facts = run
    _no_error(facts, "ops")
    v_ref, c_ref = routing_reference_loop(inputs["u_small"], iterations)
    np.testing.assert_allclose(out[f"v_small_{iterations}"], v_ref, **TOL)
    np.testing.assert_allclose(out[f"c_small_{iterations}"], c_ref, **TOL)


def test_routing_bias_and_out_major(run):
    inputs, out, facts = run
    _no_error(facts, "ops")
    np.testing.assert_allclose(out["v_bias"], routing_reference_loop(inputs["u_small"], 3, inputs["bias"])[0], **TOL)
    np.testing.assert_allclose(out["v_out_major"], routing_reference_loop(inputs["u_small"], 3)[0], **TOL)


def test_routing_real_size(run):
    inputs, out, facts = run
    _no_error(facts, "ops")
    v_ref, c_ref = routing_reference_np(inputs["u_real"], 3)
    assert out["v_real"].shape == (2, 10, 16) and out["c_real"].shape == (2, 1152, 10)
    np.testing.assert_allclose(out["v_real"], v_ref, **TOL)
    np.testing.assert_allclose(out["c_real"], c_ref, **TOL)


def test_routing_backward_matches_autodiff_and_finite_differences(run):
    """The hand-written routing backward (keras.ops.custom_gradient) on this backend."""
    inputs, out, facts = run
    _no_error(facts, "routing_grad")
    du_ref, db_ref = routing_gradient_reference(inputs["u_small"], 3, inputs["w_v"], inputs["bias"])
    for tag in ("hand", "autodiff"):
        np.testing.assert_allclose(out[f"du_{tag}"], du_ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out[f"dbias_{tag}"], db_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["du_hand"], out["du_autodiff"], rtol=1e-5, atol=1e-6)


def test_routing_backward_mixed_precision_and_variables(run):
    """bfloat16 û with a float32 bias: bfloat16 dû, float32 dbias close to float32's; and a
    keras.Variable passed straight in gets the same gradient as a tensor."""
    inputs, out, facts = run
    _no_error(facts, "routing_grad_more")
    assert facts["bf16"] == ["bfloat16", "float32"]
    ref = out["dbias_hand"]
    np.testing.assert_allclose(out["dbias_bf16"], ref, rtol=0.05, atol=0.02 * np.abs(ref).max())
    # d sum(v²)/dû = 2v · dv/dû, i.e. the gradient of sum(v · w) with w = 2v held fixed
    v_ref = routing_reference_loop(inputs["u_small"], 3)[0]
    du_ref, _ = routing_gradient_reference(inputs["u_small"], 3, 2 * v_ref)
    np.testing.assert_allclose(out["dvar"], du_ref.transpose(0, 2, 1, 3), rtol=1e-4, atol=1e-5)


def test_routing_backward_on_torch_frees_u_hat_and_refuses_second_order(run, request):
    if request.node.callspec.params["run"] != "torch":
        pytest.skip("PyTorch only")
    _, _, facts = run
    _no_error(facts, "routing_grad_more")
    assert facts["u_hat_freed_after_backward"]
    assert facts["second_order"] is not None and "autodiff=True" in facts["second_order"]


def test_capsnet_forward_shapes(run):
    _, _, facts = run
    _no_error(facts, "model")
    assert facts["params"] == 8_215_728
    assert facts["shapes"] == {
        "conv1": [2, 20, 20, 256], "primary_conv": [2, 6, 6, 256], "primary_caps": [2, 1152, 8],
        "u_hat": [2, 10, 1152, 16], "c": [2, 1152, 10], "v": [2, 10, 16], "lengths": [2, 10],
        "masked": [2, 160], "reconstructions": [2, 28, 28, 1],
    }
    assert facts["lengths_finite"]


def test_shape_errors(run):
    _, _, facts = run
    _no_error(facts, "model")
    assert facts["bad_channels"] is not None and "ShapeError in CapsNet (images)" in facts["bad_channels"]
    assert "dim 3 (channels) differs" in facts["bad_channels"]
    assert facts["bad_uint8"] is not None and "expected a float tensor" in facts["bad_uint8"]
    assert facts["bad_rank"] is not None and "expected rank 4" in facts["bad_rank"]
    assert facts["bad_labels"] is not None and "one-hot" in facts["bad_labels"]


def test_fit_step_runs_with_finite_loss(run):
    _, _, facts = run
    _no_error(facts, "fit")
    assert len(facts["fit_loss"]) == 1 and np.isfinite(facts["fit_loss"][0])
    assert facts["weights_changed"] == facts["n_weights"]        # every variable was updated
    assert facts["eval_loss"] == pytest.approx(facts["eval_by_hand"], rel=1e-5, abs=1e-5)


def test_squash_gradient_finite_for_moderate_and_large_values(run):
    _, _, facts = run
    _no_error(facts, "squash_grad")
    for log_mag in ("-10", "0", "10", "20", "30"):
        assert facts["grad_finite"][log_mag], log_mag


def test_squash_gradient_finite_at_zero_and_tiny_values(run):
    _, _, facts = run
    _no_error(facts, "squash_grad")
    for log_mag in ("None", "-30", "-20"):
        assert facts["grad_finite"][log_mag], log_mag
