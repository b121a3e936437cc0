"""capslib.runmode: which mode the book runs in, and why, from the environment and the machine."""

import pytest

from capslib import runmode


@pytest.fixture
def env(monkeypatch):
    monkeypatch.delenv("CAPSBOOK_MODE", raising=False)
    monkeypatch.delenv("CAPSBOOK_QUICK", raising=False)
    return monkeypatch


def test_explicit_switch_wins_over_everything(env):
    env.setattr(runmode, "_gpus_cached", lambda: ("NVIDIA H200",))
    env.setenv("CAPSBOOK_QUICK", "1")
    env.setenv("CAPSBOOK_MODE", "full")
    assert (runmode.mode(), runmode.mode_reason()) == ("full", "CAPSBOOK_MODE=full")
    env.setenv("CAPSBOOK_MODE", "quick")
    assert runmode.quick() and runmode.mode_reason() == "CAPSBOOK_MODE=quick"


@pytest.mark.parametrize("value, expected", [("1", "quick"), ("true", "quick"), ("0", "full"), ("no", "full")])
def test_capsbook_quick_is_the_older_switch(env, value, expected):
    env.setenv("CAPSBOOK_QUICK", value)
    assert runmode.mode() == expected and runmode.mode_reason() == f"CAPSBOOK_QUICK={value}"


@pytest.mark.parametrize("gpus, expected", [((), "quick"), (("NVIDIA H200",), "full")])
def test_auto_follows_the_gpu(env, gpus, expected):
    env.setattr(runmode, "_gpus_cached", lambda: gpus)
    env.setenv("CAPSBOOK_MODE", "auto")
    assert runmode.mode() == expected
    assert runmode.mode_reason() == ("auto: no GPU found" if not gpus else "auto: GPU found (NVIDIA H200)")
    assert runmode.device_description().startswith("GPU (NVIDIA H200)" if gpus else "CPU (")


@pytest.mark.parametrize("var, value", [("CAPSBOOK_MODE", "fast"), ("CAPSBOOK_QUICK", "maybe")])
def test_unknown_values_are_refused(env, var, value):
    env.setenv(var, value)
    with pytest.raises(ValueError, match=var):
        runmode.mode()


def test_describe_and_model_note_name_mode_data_and_machine(env):
    env.setenv("CAPSBOOK_QUICK", "1")
    line = runmode.describe("4,000 digits", 1)
    assert line.startswith("quick mode (CAPSBOOK_QUICK=1): 4,000 digits; 1 epoch; trained on this page on CPU")
    history = {"data": "4,000 digits", "epochs": [{"val_categorical_accuracy": 0.9}, {"val_categorical_accuracy": 0.95}]}
    note = runmode.model_note(history)
    assert "2 epochs; trained by this build on CPU" in note and note.endswith("held-out accuracy 95.00%")
    assert runmode.model_label(history) == "model trained by this build (2 epochs, held-out 95.00%)"
    reference = {"name": "mnist", "weights": {}, "parameters": 8_215_728,
                 "evaluation": {"heldout_accuracy": 0.991, "data": "2,004 digits"},
                 "training": {"epochs_run": 23, "command": "make reference-models  (python -m …)",
                              "data": "7,996 digits; offline", "environment": {"device": "CPU (2 cores) via tensorflow",
                                                                                "date": "2026-12-02 06:00 UTC",
                                                                                "commit": "0123456789abcdef"}}}
    assert runmode.model_label(reference) == "reference model `mnist` (23 epochs, held-out 99.10%)"
    assert runmode.model_note(reference) == (
        "reference model `mnist` (8,215,728 parameters): trained by `make reference-models`, 23 epochs on "
        "7,996 digits; accuracy 99.10% on held-out data; CPU (2 cores) via tensorflow, "
        "2026-12-02 06:00 UTC, commit 0123456")
    reference["training"]["decoder_stage"] = {"epochs": 12, "copies": 2, "history": []}
    assert "23 epochs on 7,996 digits, then its decoder alone for 12 epochs (capsules frozen); " in \
        runmode.model_note(reference)


@pytest.mark.parametrize("gpus, expected", [((), "quick"), (("NVIDIA H200",), "full")])
def test_book_banner_says_mode_reason_and_the_switch(env, gpus, expected):
    env.setattr(runmode, "_gpus_cached", lambda: gpus)
    line = runmode.book_banner()
    assert line.startswith(f"make book: {expected} mode (auto: ")
    assert ("reference models" in line) == (expected == "quick")
    assert line.endswith(f"CAPSBOOK_MODE={'full' if expected == 'quick' else 'quick'} forces "
                         f"{'full' if expected == 'quick' else 'quick'} mode.")

