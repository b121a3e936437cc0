"""capslib doctor: the machine as the deep-learning stack sees it.

The classic failure when training CapsNet is a GPU that is there but unused:
``nvidia-smi`` lists it, yet TensorFlow quietly trains on the CPU because the
wheel is CPU-only or its CUDA/cuDNN libraries do not match. This module
collects the facts (Python, TensorFlow, Keras, JAX, PyTorch, the NVIDIA
driver, the relevant environment variables), diagnoses them, and prints a
report with a fix for every problem it recognises.

Run it from a shell::

    python -m capslib.doctor            # readable report
    python -m capslib.doctor --json     # {"facts": ..., "findings": [...]}
    python -m capslib.doctor --strict   # exit 1 if any finding is an error

or from Python: ``facts = collect(); findings = diagnose(facts)``.
``diagnose`` is a pure function of the facts, so every case can be tested
without a GPU by handing it simulated facts.

Each framework is imported only inside its own probe (importing TensorFlow
or PyTorch takes seconds), and a probe that fails records its error as a
fact: the doctor never crashes and never prints a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import asdict, dataclass

LEVELS = ("ok", "info", "warning", "error")
TESTED_BUILDS_URL = "https://www.tensorflow.org/install/source#gpu"
TORCH_INSTALL_URL = "https://pytorch.org/get-started/locally/"
ENV_VARS = (
    "KERAS_BACKEND",
    "CUDA_VISIBLE_DEVICES",
    "TF_FORCE_GPU_ALLOW_GROWTH",
    "XLA_FLAGS",
    "TF_CPP_MIN_LOG_LEVEL",
    "JAX_PLATFORMS",
    "LD_LIBRARY_PATH",
)
NVIDIA_SMI_TIMEOUT_S = 15
MAX_LOG_LINES = 50
REPORT_WIDTH = 100


@dataclass(frozen=True)
class Finding:
    level: str  # one of LEVELS
    message: str
    fix: str = ""

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {self.level!r}")


# --------------------------------------------------------------------------
# Collecting facts
# --------------------------------------------------------------------------


@contextlib.contextmanager
def _captured_output():
    """Catch everything printed while a framework loads, C++ logs included.

    TensorFlow's C++ logger and CUDA loaders write straight to file
    descriptor 2, so redirecting ``sys.stderr`` is not enough: the descriptors
    themselves go to a temporary file. Python-level prints are caught too, so
    ``--json`` keeps stdout clean. The caller gets a list that fills with the
    captured lines when the block ends.
    """
    lines: list[str] = []
    py_text = io.StringIO()
    tmp = tempfile.TemporaryFile()
    saved = {}
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    for fd in (1, 2):
        with contextlib.suppress(OSError):  # no such descriptor: nothing to hide
            saved[fd] = os.dup(fd)
            os.dup2(tmp.fileno(), fd)
    try:
        with contextlib.redirect_stdout(py_text), contextlib.redirect_stderr(py_text):
            yield lines
    finally:
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        tmp.seek(0)
        text = tmp.read().decode("utf-8", errors="replace") + py_text.getvalue()
        tmp.close()
        lines.extend(line.rstrip() for line in text.splitlines() if line.strip())
        del lines[:-MAX_LOG_LINES]


def _run_probe(probe) -> dict:
    """Run one probe quietly; an exception becomes an "error" fact."""
    with _captured_output() as log:
        try:
            facts = probe()
        except Exception as exc:  # a broken install must not crash the doctor
            facts = {"installed": True, "error": f"{type(exc).__name__}: {exc}"}
    if log:
        facts["log"] = log
    return facts


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def probe_system() -> dict:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "os": platform.system(),  # "Linux", "Windows", "Darwin"
        "machine": platform.machine(),
    }


def probe_nvidia_smi() -> dict:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"found": False, "gpus": []}
    query = [exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"found": True, "gpus": [], "error": f"timed out after {NVIDIA_SMI_TIMEOUT_S} s"}
    if out.returncode != 0:
        message = (out.stdout + out.stderr).strip() or f"exit code {out.returncode}"
        return {"found": True, "gpus": [], "error": message}
    gpus = []
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append(dict(zip(("name", "driver_version", "memory_total"), parts)))
    facts = {"found": True, "path": exe, "gpus": gpus}
    # The plain header names the newest CUDA the driver supports ("CUDA Version: 12.4").
    with contextlib.suppress(Exception):
        header = subprocess.run([exe], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
        match = re.search(r"CUDA Version:\s*([\d.]+)", header.stdout)
        if match:
            facts["driver_cuda_version"] = match.group(1)
    return facts


def probe_tensorflow() -> dict:
    if not _installed("tensorflow"):
        return {"installed": False}
    # Level 1 hides TF's INFO chatter but keeps WARNINGs such as
    # "Could not load dynamic library", which we capture rather than print.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    import tensorflow as tf

    build = dict(tf.sysconfig.get_build_info())
    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = {}
        with contextlib.suppress(Exception):
            details = tf.config.experimental.get_device_details(device)
        name = details.get("device_name")
        gpus.append(f"{device.name} ({name})" if name else device.name)
    return {
        "installed": True,
        "version": tf.__version__,
        "is_cuda_build": bool(build.get("is_cuda_build", False)),
        "is_rocm_build": bool(build.get("is_rocm_build", False)),
        "cuda_version": build.get("cuda_version"),
        "cudnn_version": build.get("cudnn_version"),
        "gpus": gpus,
    }


def probe_keras() -> dict:
    if not _installed("keras"):
        return {"installed": False}
    import keras  # imports the backend framework too (already loaded for TF)

    return {"installed": True, "version": keras.__version__, "backend": keras.backend.backend()}


def probe_jax() -> dict:
    if not _installed("jax"):
        return {"installed": False}
    import jax

    devices = jax.devices()
    return {
        "installed": True,
        "version": jax.__version__,
        "default_backend": jax.default_backend(),
        "devices": [f"{d} ({d.device_kind})" for d in devices],
        "gpus": [f"{d} ({d.device_kind})" for d in devices if d.platform in ("gpu", "cuda", "rocm")],
    }


def probe_torch() -> dict:
    if not _installed("torch"):
        return {"installed": False}
    import torch

    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None)
    return {
        "installed": True,
        "version": torch.__version__,
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,  # None for a CPU-only wheel
        "mps_available": bool(mps and mps.is_available()),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
    }


def collect() -> dict:
    """Gather the facts as a JSON-serialisable dict (takes a few seconds)."""
    # The environment is read first, before probes set defaults of their own.
    env = {name: os.environ.get(name) for name in ENV_VARS}
    # Frameworks imported before the doctor ran (e.g. by the caller) printed
    # their start-up messages uncaptured, and may have changed the environment.
    preloaded = [name for name in ("tensorflow", "keras", "jax", "torch") if name in sys.modules]
    return {
        "system": _run_probe(probe_system),
        "env": env,
        "preloaded": preloaded,
        "nvidia_smi": _run_probe(probe_nvidia_smi),
        "tensorflow": _run_probe(probe_tensorflow),
        "keras": _run_probe(probe_keras),
        "jax": _run_probe(probe_jax),
        "torch": _run_probe(probe_torch),
    }


# --------------------------------------------------------------------------
# Diagnosis: a pure function of the facts
# --------------------------------------------------------------------------

# What each CUDA library a TF wheel loads at start-up is, to name it plainly.
_CUDA_LIBRARIES = {
    "libcudart": "the CUDA runtime", "cudart64": "the CUDA runtime",
    "libcublas": "cuBLAS", "libcublasLt": "cuBLAS", "libcufft": "cuFFT", "libcurand": "cuRAND",
    "libcusolver": "cuSOLVER", "libcusparse": "cuSPARSE",
    "libcudnn": "cuDNN", "cudnn64": "cuDNN",
    "libnvinfer": "TensorRT", "libnvinfer_plugin": "TensorRT",
}
_FRAMEWORKS = {"tensorflow": "TensorFlow", "keras": "Keras", "jax": "JAX", "torch": "PyTorch"}


def _describe_library(filename: str) -> str:
    base = re.sub(r"_\d+$", "", filename.split(".")[0])  # Windows: cudart64_110 -> cudart64
    return f"{filename} ({_CUDA_LIBRARIES.get(base, 'a CUDA library')})"


def _major(version) -> int | None:
    match = re.match(r"\s*(\d+)", str(version or ""))
    return int(match.group(1)) if match else None


def _usable(section: dict) -> bool:
    """Installed and loaded: only then does "sees no GPU" mean something."""
    return bool(section.get("installed")) and not section.get("error")


def _gpus_hidden(env: dict) -> bool:
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    return cvd is not None and cvd.strip() in ("", "-1")


def _tf_fix(tf: dict, os_name: str) -> str:
    pin = f"=={tf['version']}" if tf.get("version") else ""
    if os_name == "Windows":
        return ("Native Windows TensorFlow has no GPU support after 2.10: use WSL2 (Ubuntu) and run "
                f'pip install "tensorflow[and-cuda]{pin}" there, or use Google Colab.')
    if os_name == "Darwin":
        return "macOS has no CUDA; on Apple silicon, pip install tensorflow-metal adds the Metal GPU."
    uninstall = "" if tf.get("is_cuda_build") else "pip uninstall -y tensorflow-cpu && "
    return (f'{uninstall}pip install "tensorflow[and-cuda]{pin}" (on Linux it brings the CUDA and '
            f"cuDNN pip packages that match the wheel). Versions tested together: {TESTED_BUILDS_URL}")


def _environment_findings(env: dict) -> list[Finding]:
    findings = []
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if _gpus_hidden(env):
        findings.append(Finding(
            "warning",
            f"CUDA_VISIBLE_DEVICES is set to {cvd!r}: this hides every GPU from TensorFlow, "
            "JAX and PyTorch (nvidia-smi still lists them).",
            "unset CUDA_VISIBLE_DEVICES (or set it to the GPUs to use, e.g. CUDA_VISIBLE_DEVICES=0).",
        ))
    elif cvd is not None:
        findings.append(Finding(
            "info", f"CUDA_VISIBLE_DEVICES={cvd}: the frameworks see only these GPUs, renumbered from 0."))

    growth = env.get("TF_FORCE_GPU_ALLOW_GROWTH")
    if growth is not None and growth.lower() in ("true", "false"):
        findings.append(Finding(
            "info",
            f"TF_FORCE_GPU_ALLOW_GROWTH={growth}: when true, TensorFlow takes GPU memory as it needs "
            "it instead of reserving nearly all of it at start-up (useful on a shared GPU)."))
    elif growth is not None:
        findings.append(Finding(
            "warning",
            f"TF_FORCE_GPU_ALLOW_GROWTH={growth!r} is ignored: TensorFlow accepts only 'true' or 'false'.",
            "export TF_FORCE_GPU_ALLOW_GROWTH=true"))

    xla_flags = env.get("XLA_FLAGS")
    if xla_flags:
        note = ""
        if "xla_force_host_platform_device_count" in xla_flags:
            note = " --xla_force_host_platform_device_count splits the CPU into fake devices (for tests, not speed)."
        findings.append(Finding(
            "info", f"XLA_FLAGS={xla_flags!r} changes how TensorFlow (jit_compile) and JAX compile.{note}",
            "If you see XLA errors or odd device counts, run again with XLA_FLAGS unset."))
    return findings


def _broken_install_findings(facts: dict) -> list[Finding]:
    findings = []
    python = (facts.get("system") or {}).get("executable") or "python"
    for key, name in _FRAMEWORKS.items():
        error = (facts.get(key) or {}).get("error")
        if error:
            findings.append(Finding(
                "warning", f"{name} is installed but failed to load: {error}",
                f"Reinstall it into this Python: {python} -m pip install --force-reinstall {key}"))
    smi_error = (facts.get("nvidia_smi") or {}).get("error")
    if smi_error:
        findings.append(Finding(
            "error",
            f"nvidia-smi is installed but failed: {smi_error}. The NVIDIA driver is not loaded, "
            "or the user-space driver does not match the kernel module.",
            "Reboot after installing or updating the driver, then run nvidia-smi by hand; "
            "reinstall the driver if it still fails."))
    return findings


def _backend_findings(backend: str, facts: dict) -> list[Finding]:
    findings = []
    if backend != "tensorflow":
        findings.append(Finding(
            "info",
            f"The Keras backend is {backend}. The book uses TensorFlow by default; the KERAS_BACKEND "
            "environment variable (or ~/.keras/keras.json) selects another before keras is imported."))
    if (facts.get(backend) or {}).get("installed") is False:
        findings.append(Finding(
            "error", f"The Keras backend is {backend}, but {backend} is not installed.",
            f"pip install {backend}, or choose an installed backend with KERAS_BACKEND."))
    return findings


def _tf_log_findings(tf: dict, os_name: str) -> list[Finding]:
    """TF names the CUDA library it failed to load; that file name says which version it wanted."""
    log = tf.get("log") or ""
    log = log if isinstance(log, str) else "\n".join(log)
    missing = sorted(set(re.findall(r"Could not load dynamic library '([^']+)'", log)))
    if missing and all(lib.startswith("libnvinfer") for lib in missing):
        named = ", ".join(_describe_library(lib) for lib in missing)
        return [Finding("info", f"TensorFlow could not load {named}: TensorRT is optional, this is harmless.")]
    if missing:
        named = ", ".join(_describe_library(lib) for lib in missing)
        built = f"CUDA {tf.get('cuda_version') or '?'} / cuDNN {tf.get('cudnn_version') or '?'}"
        return [Finding(
            "error",
            f"TensorFlow could not load {named}. The number in the file name is the version the "
            f"wheel was built for ({built}); that library is missing or not on the loader path, "
            "so TensorFlow falls back to the CPU and tf.test.is_gpu_available() returns False.",
            _tf_fix(tf, os_name))]
    if "Cannot dlopen some GPU libraries" in log:  # the newer wording, without a file name
        return [Finding(
            "error", "TensorFlow could not load some of its GPU libraries (CUDA/cuDNN), so it runs on the CPU.",
            _tf_fix(tf, os_name))]
    return []


def _unseen_gpu_findings(facts: dict, backend: str, os_name: str) -> list[Finding]:
    """nvidia-smi lists a GPU, but a framework that should use it does not see it."""
    smi, tf = facts.get("nvidia_smi") or {}, facts.get("tensorflow") or {}
    jax_, torch_ = facts.get("jax") or {}, facts.get("torch") or {}
    names = ", ".join(g.get("name", "?") for g in smi.get("gpus") or [])
    driver = (smi.get("gpus") or [{}])[0].get("driver_version", "?")
    findings = []

    if _usable(tf) and not tf.get("gpus"):
        version = tf.get("version", "?")
        if not tf.get("is_cuda_build") and not tf.get("is_rocm_build"):
            why = {
                "Windows": "native Windows builds have no GPU support after TF 2.10",
                "Darwin": "macOS builds never include CUDA",
            }.get(os_name, "it is the CPU-only wheel (tensorflow-cpu)")
            findings.append(Finding(
                "error",
                f"nvidia-smi sees {names}, but TensorFlow {version} is not a CUDA build: {why}. "
                "It cannot use the GPU at all.",
                _tf_fix(tf, os_name)))
        else:
            cuda, cudnn = tf.get("cuda_version") or "?", tf.get("cudnn_version") or "?"
            message = (
                f"nvidia-smi sees {names} (driver {driver}), but TensorFlow {version}, a CUDA build, "
                f"sees no GPU. The wheel was built with CUDA {cuda} and cuDNN {cudnn} and loads those "
                "libraries at start-up; if they are missing or another version, it silently falls back "
                "to the CPU. This is the classic mismatch behind the old \"Could not load dynamic "
                "library 'libcudart.so.11.0'\" message and tf.test.is_gpu_available() returning False.")
            driver_cuda = smi.get("driver_cuda_version")
            if None not in (_major(driver_cuda), _major(cuda)) and _major(driver_cuda) < _major(cuda):
                message += (f" Also, the driver supports CUDA up to {driver_cuda}, older than the "
                            f"CUDA {cuda} the wheel needs: update the NVIDIA driver.")
            findings.append(Finding("error", message, _tf_fix(tf, os_name)))

    if backend == "jax" and _usable(jax_) and not jax_.get("gpus"):
        findings.append(Finding(
            "warning",
            f"The Keras backend is jax and nvidia-smi sees {names}, but JAX sees only "
            f"{jax_.get('default_backend') or 'the CPU'}: this jaxlib has no CUDA support.",
            'pip install -U "jax[cuda12]"'))
    if backend == "torch" and _usable(torch_) and not torch_.get("gpus"):
        cuda = torch_.get("cuda_version")
        kind = f"built for CUDA {cuda}" if cuda else "a CPU-only wheel"
        findings.append(Finding(
            "warning",
            f"The Keras backend is torch and nvidia-smi sees {names}, but PyTorch ({kind}) "
            "reports torch.cuda.is_available() == False.",
            f"Install the CUDA build of PyTorch with the command for your system from {TORCH_INSTALL_URL}"))
    return findings


def diagnose(facts: dict) -> list[Finding]:
    """Turn collected (or simulated) facts into findings; missing facts count as absent."""
    env = facts.get("env") or {}
    os_name = (facts.get("system") or {}).get("os", "")
    smi = facts.get("nvidia_smi") or {}
    backend = (facts.get("keras") or {}).get("backend") or env.get("KERAS_BACKEND") or "tensorflow"
    framework_gpus = {key: (facts.get(key) or {}).get("gpus") or [] for key in ("tensorflow", "jax", "torch")}

    findings = _environment_findings(env)
    findings += _broken_install_findings(facts)
    findings += _backend_findings(backend, facts)
    findings += _tf_log_findings(facts.get("tensorflow") or {}, os_name)

    if not smi.get("gpus") and not any(framework_gpus.values()) and not smi.get("error"):
        findings.append(Finding(
            "info",
            "No GPU found: training runs on the CPU. That works for every chapter, but full "
            "CapsNet training is much slower than on a GPU.",
            "For a free GPU, open the notebook in Google Colab and choose "
            "Runtime → Change runtime type → GPU, then run this doctor again there."))
    if smi.get("gpus") and not _gpus_hidden(env):  # when hidden, the variable is the cause, already reported
        findings += _unseen_gpu_findings(facts, backend, os_name)

    for key, gpus in framework_gpus.items():
        if gpus:
            findings.append(Finding("ok", f"{_FRAMEWORKS[key]} sees {len(gpus)} GPU(s): {', '.join(gpus)}."))
    if len(framework_gpus.get(backend, [])) >= 2:
        findings.append(Finding(
            "info",
            f"{len(framework_gpus[backend])} GPUs are visible to the {backend} backend: train on all of "
            "them with --multi-gpu (MirroredStrategy on TensorFlow, keras.distribution.DataParallel on JAX)."))
    return findings


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def _framework_rows(section: dict, rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    if section.get("installed") is False:
        return [("Status", "not installed")]
    if section.get("error"):
        return [("Status", f"failed to load: {section['error']}")]
    if section.get("log"):
        rows = rows + [("Captured log", f"{len(section['log'])} line(s), shown with --json")]
    return rows


def _list(items) -> str:
    return ", ".join(items) if items else "none"


def format_report(facts: dict, findings: list[Finding]) -> str:
    system, env, smi = (facts.get(k) or {} for k in ("system", "env", "nvidia_smi"))
    tf, keras_, jax_, torch_ = (facts.get(k) or {} for k in ("tensorflow", "keras", "jax", "torch"))

    def yes_no(flag):
        return "yes" if flag else "no"

    system_rows = [
        ("Python", f"{system.get('python')} ({system.get('implementation')}) {system.get('executable')}"),
        ("Platform", f"{system.get('platform')} ({system.get('machine')})"),
    ]
    system_rows += [(name, "(unset)" if env.get(name) is None else repr(env[name]))
                    for name in ENV_VARS if name != "LD_LIBRARY_PATH"]
    if facts.get("preloaded"):
        system_rows.append(("Preloaded", ", ".join(facts["preloaded"])
                            + " (imported before the doctor ran: start-up messages not captured)"))

    sections = {
        "System": system_rows,
        "Keras": _framework_rows(keras_, [
            ("Version", str(keras_.get("version"))),
            ("Backend", str(keras_.get("backend"))),
        ]),
        "TensorFlow": _framework_rows(tf, [
            ("Version", str(tf.get("version"))),
            ("CUDA build", yes_no(tf.get("is_cuda_build")) + ("" if tf.get("is_cuda_build") else " (CPU-only wheel)")),
            ("Built with CUDA", str(tf.get("cuda_version") or "-")),
            ("Built with cuDNN", str(tf.get("cudnn_version") or "-")),
            ("GPUs", _list(tf.get("gpus"))),
        ]),
        "JAX": _framework_rows(jax_, [
            ("Version", str(jax_.get("version"))),
            ("Devices", _list(jax_.get("devices"))),
        ]),
        "PyTorch": _framework_rows(torch_, [
            ("Version", str(torch_.get("version"))),
            ("CUDA available", yes_no(torch_.get("cuda_available"))),
            ("Built with CUDA", str(torch_.get("cuda_version") or "-")),
            ("MPS available", yes_no(torch_.get("mps_available"))),
            ("GPUs", _list(torch_.get("gpus"))),
        ]),
    }
    if not smi.get("found"):
        sections["GPU driver"] = [("nvidia-smi", "not found (no NVIDIA driver on this machine's PATH)")]
    elif smi.get("error"):
        sections["GPU driver"] = [("nvidia-smi", f"failed: {smi['error']}")]
    else:
        sections["GPU driver"] = [("nvidia-smi", smi.get("path", "found"))]
        if smi.get("driver_cuda_version"):
            sections["GPU driver"].append(("Driver CUDA", f"up to {smi['driver_cuda_version']}"))
        for i, gpu in enumerate(smi.get("gpus") or []):
            sections["GPU driver"].append(
                (f"GPU {i}", f"{gpu.get('name')}, driver {gpu.get('driver_version')}, {gpu.get('memory_total')}"))

    width = max(len(label) for rows in sections.values() for label, _ in rows) + 2
    out = ["capslib doctor: the machine as the deep-learning stack sees it", ""]
    for title, rows in sections.items():
        out.append(title)
        out.extend(f"  {label:<{width}}{value}" for label, value in rows)
        out.append("")
    out.append("Diagnosis")
    indent = " " * len("  [warning] ")
    for finding in findings:
        tag = f"  [{finding.level}]".ljust(len(indent))
        out.append(textwrap.fill(finding.message, REPORT_WIDTH, initial_indent=tag, subsequent_indent=indent,
                                 break_long_words=False, break_on_hyphens=False))
        if finding.fix:  # not wrapped: it often holds a command to copy in one piece
            out.append(f"{indent}fix: {finding.fix}")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m capslib.doctor",
        description="Report how Python, TensorFlow, Keras, JAX, PyTorch and the NVIDIA driver "
                    "see this machine, and why a GPU may be going unused.",
    )
    parser.add_argument("--json", action="store_true",
                        help='print {"facts": ..., "findings": [...]} as JSON and nothing else')
    parser.add_argument("--strict", action="store_true",
                        help="exit with code 1 when a finding is an error")
    args = parser.parse_args(argv)

    facts = collect()
    findings = diagnose(facts)
    if args.json:
        print(json.dumps({"facts": facts, "findings": [asdict(f) for f in findings]}, indent=2, default=str))
    else:
        print(format_report(facts, findings))
    return 1 if args.strict and any(f.level == "error" for f in findings) else 0


if __name__ == "__main__":
    sys.exit(main())
