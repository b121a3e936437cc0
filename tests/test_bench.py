"""The benchmarks still run (smoke tests with tiny settings). They measure; tests never time."""

import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "bench", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_throughput_quick_runs_and_reports(tmp_path, capsys):
    out = tmp_path / "throughput.json"
    result = _load("gpu_throughput").main(["--quick", "--epoch", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert [r["batch_size"] for r in saved["rows"]] == [8, 16]
    for row in saved["rows"]:
        assert row["images_per_second"] > 0 and row["min_ips"] <= row["images_per_second"] <= row["max_ips"]
    assert saved["best_batch_size"] in (8, 16)
    assert saved["measured_epoch"]["images"] == 64
    assert saved["environment"]["backend"] and saved["environment"]["device"]
    assert result["estimated_60k_epoch_seconds"] > 0
    assert "images/s" in capsys.readouterr().out


def test_init_comparison_quick_runs_the_variants_it_names(tmp_path):
    # Two variants whose difference is the point: the official 1/32 on the primary capsules.
    out = tmp_path / "init.json"
    assert _load("init_comparison").main(["--quick", "--variants", "official,official_no_scale", "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    by_name = {r["variant"]: r for r in saved["results"]}
    assert set(by_name) == {"official", "official_no_scale"} and saved["train_size"] == 512
    # without the 1/32 the primary capsules start saturated; with it they start short
    assert by_name["official_no_scale"]["init"]["primary_length_mean"] > 0.9
    assert by_name["official"]["init"]["primary_length_mean"] < 0.2
    for r in saved["results"]:
        assert len(r["epochs"]) == 1 and 0 <= r["final"]["accuracy"] <= 1
        assert r["final"]["reconstruction_mse"] > 0 and r["params"] == 8_215_728


def test_reference_models_report_prints_every_record(tmp_path, capsys):
    # The RESULTS.md section is regenerated from the records: every model, every epoch, the targets.
    from capslib import pretrained
    assert _load("reference_models").main([]) == 0
    text = capsys.readouterr().out
    for name in pretrained.NAMES:
        rec = json.loads((pretrained.reference_dir() / f"{name}.json").read_text())
        assert f"### `{name}`" in text and f"{rec['parameters']:,} parameters" in text
        assert f"| {rec['training']['epochs_run']} |" in text
    assert "| held-out accuracy | >= 99.00% |" in text
    empty = _load("reference_models")
    try:
        empty.main(["--dir", str(tmp_path)])
    except SystemExit as e:
        assert "make reference-models" in str(e)
    else:
        raise AssertionError("an empty directory must be refused")
