"""Tests for capslib.doctor: the real report on this machine, and the diagnosis on simulated facts.

The diagnosis is a pure function, so every GPU situation (missing CUDA libraries,
a CPU-only wheel, hidden devices, several GPUs) is tested here without a GPU.
Only two subprocess runs, in parallel: each one imports TensorFlow (~5 s).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from capslib import doctor
from capslib.doctor import Finding, diagnose

ROOT = Path(__file__).resolve().parents[1]
HAS_NVIDIA_SMI = shutil.which("nvidia-smi") is not None
# Old TF log format ("2021-05-01 12:00:00.123: W tensorflow/...") and the absl one
# TF uses now ("I0000 00:00:1700000000.123456  1234 port.cc:153] ...").
TF_LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d .*(I|W|E) tensorflow|^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+:\d+\]",
    re.MULTILINE,
)


@pytest.fixture(scope="module")
def doctor_runs() -> dict:
    """`python -m capslib.doctor` as a reader runs it (TF's log level unset), with and
    without --json; both start at once since each spends seconds importing TensorFlow."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    procs = {
        args: subprocess.Popen([sys.executable, "-m", "capslib.doctor", *args], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for args in [(), ("--json",)]
    }
    runs = {}
    for args, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        runs[args] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return runs


def messages(findings) -> str:
    return "\n".join(f"{f.level}: {f.message} | {f.fix}" for f in findings)


def assert_gpu_verdict_matches_machine(payload: dict) -> None:
    findings = payload["findings"]
    no_gpu = [f for f in findings if f["message"].startswith("No GPU found")]
    assert payload["facts"]["nvidia_smi"]["found"] == HAS_NVIDIA_SMI
    if HAS_NVIDIA_SMI:
        assert not no_gpu
    else:
        assert len(no_gpu) == 1 and no_gpu[0]["level"] == "info"
        assert "Colab" in no_gpu[0]["fix"]


# --------------------------------------------------------------------------
# The real machine
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def in_process_json():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = doctor.main(["--json"])
    return code, out.getvalue()


def test_json_in_process_reports_this_machine(in_process_json):
    import keras
    import tensorflow as tf

    code, stdout = in_process_json
    assert code == 0
    payload = json.loads(stdout)  # nothing but JSON on stdout
    facts = payload["facts"]
    assert facts["tensorflow"]["version"] == tf.__version__
    assert facts["tensorflow"]["is_cuda_build"] == tf.test.is_built_with_cuda()
    assert facts["keras"]["version"] == keras.__version__
    assert facts["keras"]["backend"] == keras.backend.backend()
    assert facts["system"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert_gpu_verdict_matches_machine(payload)
    for finding in payload["findings"]:
        assert set(finding) == {"level", "message", "fix"}
        assert finding["level"] in doctor.LEVELS


def test_json_subprocess_is_valid_and_exits_zero(doctor_runs):
    import keras
    import tensorflow as tf

    proc = doctor_runs[("--json",)]
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["facts"]["tensorflow"]["version"] == tf.__version__
    assert payload["facts"]["keras"]["version"] == keras.__version__
    assert_gpu_verdict_matches_machine(payload)


def test_human_report_subprocess_is_clean(doctor_runs):
    proc = doctor_runs[()]
    assert proc.returncode == 0, proc.stderr
    report = proc.stdout
    for section in ("System", "TensorFlow", "JAX", "PyTorch", "GPU driver", "Diagnosis"):
        assert re.search(rf"^{section}$", report, re.MULTILINE), section
    if not HAS_NVIDIA_SMI:
        assert "No GPU found" in report
    assert "Traceback" not in report + proc.stderr
    assert not TF_LOG_LINE.search(report), report
    # Frameworks the doctor imports itself must not leak their start-up chatter;
    # ones imported before it ran (by the package's __init__) are out of its reach.
    if "Preloaded" not in report:
        assert not TF_LOG_LINE.search(proc.stderr), proc.stderr


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        doctor.main(["--help"])
    assert exit_info.value.code == 0
    assert "--json" in capsys.readouterr().out


# --------------------------------------------------------------------------
# Probes never crash and never leak output
# --------------------------------------------------------------------------


def test_failing_probe_becomes_a_fact_and_its_output_is_captured(capfd):
    def noisy_broken_probe():
        os.write(2, b"2021-05-01 12:00:00.1: W tensorflow/stream_executor/platform/default/"
                    b"dso_loader.cc:60] Could not load dynamic library 'libcudart.so.11.0'\n")
        print("python-level chatter")
        raise ImportError("libcudart.so.11.0: cannot open shared object file")

    facts = doctor._run_probe(noisy_broken_probe)
    assert facts["error"] == "ImportError: libcudart.so.11.0: cannot open shared object file"
    assert any("Could not load dynamic library" in line for line in facts["log"])
    assert "python-level chatter" in facts["log"]
    leaked = capfd.readouterr()
    assert leaked.out == "" and leaked.err == ""


def test_strict_turns_errors_into_exit_code_1(monkeypatch, capsys):
    facts = make_facts(nvidia_smi=SMI_ONE_GPU)  # tensorflow-cpu with a GPU: an error
    monkeypatch.setattr(doctor, "collect", lambda: copy.deepcopy(facts))
    assert doctor.main([]) == 0
    assert doctor.main(["--strict"]) == 1
    assert "[error]" in capsys.readouterr().out
    monkeypatch.setattr(doctor, "collect", lambda: make_facts())
    assert doctor.main(["--strict"]) == 0


# --------------------------------------------------------------------------
# Diagnosis on simulated facts
# --------------------------------------------------------------------------

SMI_ONE_GPU = {"found": True, "gpus": [
    {"name": "NVIDIA GeForce RTX 3060", "driver_version": "550.54", "memory_total": "12288 MiB"}]}
TF_CUDA_BUILD = {"installed": True, "version": "2.21.0", "is_cuda_build": True,
                 "is_rocm_build": False, "cuda_version": "12.5.1", "cudnn_version": "9", "gpus": []}


def make_facts(**sections) -> dict:
    """Facts of a CPU-only Linux machine with tensorflow-cpu; override whole sections."""
    facts = {
        "system": {"python": "3.11.7", "implementation": "CPython", "executable": "python",
                   "platform": "Linux-x86_64", "os": "Linux", "machine": "x86_64"},
        "env": {name: None for name in doctor.ENV_VARS},
        "preloaded": [],
        "nvidia_smi": {"found": False, "gpus": []},
        "tensorflow": {"installed": True, "version": "2.21.0", "is_cuda_build": False,
                       "is_rocm_build": False, "cuda_version": None, "cudnn_version": None, "gpus": []},
        "keras": {"installed": True, "version": "3.15.1", "backend": "tensorflow"},
        "jax": {"installed": True, "version": "0.10.2", "default_backend": "cpu",
                "devices": ["cpu:0 (cpu)"], "gpus": []},
        "torch": {"installed": False},
    }
    for name, value in sections.items():
        facts[name] = copy.deepcopy(value)
    return facts


def by_level(findings, level):
    return [f for f in findings if f.level == level]


def test_no_gpu_at_all_is_info_and_points_to_colab():
    findings = diagnose(make_facts())
    assert [f.level for f in findings] == ["info"]
    assert findings[0].message.startswith("No GPU found")
    assert "Runtime → Change runtime type → GPU" in findings[0].fix


def test_missing_facts_do_not_crash():
    findings = diagnose({})
    assert any(f.message.startswith("No GPU found") for f in findings)
    assert doctor.format_report({}, findings).endswith(findings[-1].fix)


def test_gpu_with_tensorflow_cpu_wheel():
    findings = diagnose(make_facts(nvidia_smi=SMI_ONE_GPU))
    errors = by_level(findings, "error")
    assert len(errors) == 1, messages(findings)
    assert "RTX 3060" in errors[0].message
    assert "not a CUDA build" in errors[0].message and "tensorflow-cpu" in errors[0].message
    assert 'pip install "tensorflow[and-cuda]==2.21.0"' in errors[0].fix
    assert doctor.TESTED_BUILDS_URL in errors[0].fix
    assert not any("No GPU found" in f.message for f in findings)


def test_gpu_with_native_windows_tensorflow():
    facts = make_facts(nvidia_smi=SMI_ONE_GPU)
    facts["system"]["os"] = "Windows"
    (error,) = by_level(diagnose(facts), "error")
    assert "Windows" in error.message and "2.10" in error.message
    assert "WSL2" in error.fix


def test_cuda_build_mismatch_with_libcudart_log_line():
    tf = dict(TF_CUDA_BUILD, log=[
        "2021-05-01 12:00:00.1: W tensorflow/stream_executor/platform/default/dso_loader.cc:60] "
        "Could not load dynamic library 'libcudart.so.11.0'; dlerror: libcudart.so.11.0: "
        "cannot open shared object file: No such file or directory"])
    findings = diagnose(make_facts(nvidia_smi=SMI_ONE_GPU, tensorflow=tf))
    errors = by_level(findings, "error")
    assert len(errors) == 2, messages(findings)
    library, mismatch = errors
    assert "libcudart.so.11.0 (the CUDA runtime)" in library.message
    assert "is_gpu_available() returns False" in library.message
    assert "CUDA 12.5.1" in mismatch.message and "cuDNN 9" in mismatch.message
    assert "driver 550.54" in mismatch.message
    assert "libcudart.so.11.0" in mismatch.message  # names the classic error
    for error in errors:
        assert 'pip install "tensorflow[and-cuda]==2.21.0"' in error.fix
        assert "https://www.tensorflow.org/install/source#gpu" in error.fix


def test_log_text_as_a_string_and_optional_tensorrt():
    tf = dict(TF_CUDA_BUILD, log="W dso_loader.cc] Could not load dynamic library 'libcudnn.so.8'")
    (error,) = [f for f in diagnose(make_facts(tensorflow=tf)) if f.level == "error"]
    assert "libcudnn.so.8 (cuDNN)" in error.message

    tf = dict(TF_CUDA_BUILD, gpus=["/physical_device:GPU:0"],
              log=["Could not load dynamic library 'libnvinfer.so.7'"])
    findings = diagnose(make_facts(nvidia_smi=SMI_ONE_GPU, tensorflow=tf))
    assert not by_level(findings, "error"), messages(findings)
    assert any("TensorRT" in f.message and "harmless" in f.message for f in by_level(findings, "info"))

    # TensorRT missing alongside a required library: still an error, naming both.
    tf["log"].append("Could not load dynamic library 'libcublas.so.12'")
    (error,) = by_level(diagnose(make_facts(nvidia_smi=SMI_ONE_GPU, tensorflow=tf)), "error")
    assert "libcublas.so.12 (cuBLAS), libnvinfer.so.7 (TensorRT)" in error.message


def test_driver_older_than_the_wheels_cuda():
    smi = dict(SMI_ONE_GPU, driver_cuda_version="11.4")
    findings = diagnose(make_facts(nvidia_smi=smi, tensorflow=TF_CUDA_BUILD))
    (error,) = by_level(findings, "error")
    assert "update the NVIDIA driver" in error.message


def test_empty_cuda_visible_devices_hides_gpus():
    facts = make_facts(nvidia_smi=SMI_ONE_GPU, tensorflow=TF_CUDA_BUILD)
    facts["env"]["CUDA_VISIBLE_DEVICES"] = ""
    findings = diagnose(facts)
    warnings = by_level(findings, "warning")
    assert len(warnings) == 1 and "hides every GPU" in warnings[0].message
    assert "unset CUDA_VISIBLE_DEVICES" in warnings[0].fix
    # The cause is the variable, not the CUDA libraries: no mismatch error.
    assert not by_level(findings, "error"), messages(findings)


def test_other_environment_variables():
    facts = make_facts()
    facts["env"].update(CUDA_VISIBLE_DEVICES="1", TF_FORCE_GPU_ALLOW_GROWTH="yes",
                        XLA_FLAGS="--xla_force_host_platform_device_count=8")
    text = messages(diagnose(facts))
    assert "CUDA_VISIBLE_DEVICES=1" in text
    assert "warning: TF_FORCE_GPU_ALLOW_GROWTH='yes' is ignored" in text
    assert "fake devices" in text


def test_two_gpus_visible_to_tensorflow():
    tf = dict(TF_CUDA_BUILD, gpus=["/physical_device:GPU:0 (NVIDIA A100)", "/physical_device:GPU:1 (NVIDIA A100)"])
    smi = {"found": True, "gpus": SMI_ONE_GPU["gpus"] * 2}
    findings = diagnose(make_facts(nvidia_smi=smi, tensorflow=tf))
    assert not by_level(findings, "error") and not by_level(findings, "warning"), messages(findings)
    (ok,) = by_level(findings, "ok")
    assert "TensorFlow sees 2 GPU(s)" in ok.message and "GPU:1" in ok.message
    multi = [f for f in findings if "--multi-gpu" in f.message]
    assert len(multi) == 1 and "MirroredStrategy" in multi[0].message

    one = dict(tf, gpus=tf["gpus"][:1])
    assert not any("--multi-gpu" in f.message for f in diagnose(make_facts(tensorflow=one)))


def test_jax_backend_without_gpu():
    facts = make_facts(nvidia_smi=SMI_ONE_GPU, tensorflow=dict(TF_CUDA_BUILD, gpus=["/physical_device:GPU:0"]))
    facts["keras"]["backend"] = "jax"
    findings = diagnose(facts)
    (warning,) = by_level(findings, "warning")
    assert "JAX sees only cpu" in warning.message
    assert warning.fix == 'pip install -U "jax[cuda12]"'
    assert any("TensorFlow by default" in f.message and "KERAS_BACKEND" in f.message
               for f in by_level(findings, "info"))


def test_torch_backend_cpu_wheel_and_missing_backend():
    facts = make_facts(nvidia_smi=SMI_ONE_GPU, tensorflow=dict(TF_CUDA_BUILD, gpus=["/physical_device:GPU:0"]),
                       torch={"installed": True, "version": "2.5.0+cpu", "cuda_available": False,
                              "cuda_version": None, "gpus": []})
    facts["keras"]["backend"] = "torch"
    (warning,) = by_level(diagnose(facts), "warning")
    assert "CPU-only wheel" in warning.message and doctor.TORCH_INSTALL_URL in warning.fix

    facts["torch"] = {"installed": False}
    assert any("torch is not installed" in f.message for f in by_level(diagnose(facts), "error"))


def test_broken_driver_is_an_error():
    smi = {"found": True, "gpus": [], "error": "NVIDIA-SMI has failed because it couldn't "
                                               "communicate with the NVIDIA driver."}
    findings = diagnose(make_facts(nvidia_smi=smi))
    (error,) = by_level(findings, "error")
    assert "couldn't communicate" in error.message
    assert not any("No GPU found" in f.message for f in findings)


def test_finding_rejects_unknown_level():
    with pytest.raises(ValueError):
        Finding("fatal", "no such level")
