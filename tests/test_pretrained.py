"""capslib.pretrained: the shipped reference models are what their records say — same held-out
scores within 0.2 points, today's shapes, float16 without pickle, ≤ 40 MB in all — and a missing,
corrupt or mismatched file gets an error naming it and the command that makes it again."""

import hashlib
import io
import json
import re
import shutil

import numpy as np
import pytest

from capslib import pretrained, runmode


def _copy(tmp_path, name):
    for ext in ("json", "npz"):
        shutil.copy(pretrained.reference_dir() / f"{name}.{ext}", tmp_path / f"{name}.{ext}")
    return tmp_path


# --------------------------------------------------------------------------- the shipped models


def test_every_reference_model_is_shipped_within_40_mb():
    total = 0
    for name in pretrained.NAMES:
        for ext in ("json", "npz"):
            path = pretrained.reference_dir() / f"{name}.{ext}"
            assert path.exists(), f"{path} is missing: run `make reference-models`"
            total += path.stat().st_size
    assert total <= 40 * 2**20, f"reference models take {total / 2**20:.1f} MiB, more than 40"


@pytest.mark.parametrize("name", pretrained.NAMES)
def test_record_says_how_the_model_was_made(name):
    rec = json.loads((pretrained.reference_dir() / f"{name}.json").read_text())
    t = rec["training"]
    assert t["command"].startswith("make reference-models") and f"train {name}" in t["command"]
    assert re.fullmatch(r"[0-9a-f]{40}", t["environment"]["commit"])
    for key in ("date", "device", "machine", "keras", "backend"):
        assert t["environment"][key]
    assert "offline MNIST" in t["data"] and t["stopped"]
    assert t["epochs_run"] == len(t["history"]) >= 1
    assert [e["epoch"] for e in t["history"]] == list(range(1, t["epochs_run"] + 1))
    assert all(t["metric"] in e and "seconds" in e for e in t["history"])
    assert rec["weights"]["dtype"] == "float16" and rec["weights"]["file"] == f"{name}.npz"
    assert rec["evaluation"]["data"] and rec["evaluation"]["weights"] == "the shipped float16 weights"


@pytest.mark.parametrize("name", pretrained.NAMES)
def test_weights_are_float16_arrays_read_without_pickle(name):
    with np.load(pretrained.reference_dir() / f"{name}.npz", allow_pickle=False) as z:
        assert z.files and all(z[k].dtype == np.float16 for k in z.files)


@pytest.mark.parametrize("name", pretrained.NAMES)
def test_shipped_model_reproduces_its_record(name):
    # Loads with today's architecture (every name and shape checked), re-measures on held-out data.
    model, record = pretrained.load(name)
    assert model.count_params() == record["parameters"]
    for metric, (recorded, measured) in pretrained.verify(name).items():
        assert abs(recorded - measured) <= 0.002, (metric, recorded, measured)


def test_mnist_reference_model_has_learned():
    # The figures the book shows come from this model: it must be a trained CapsNet, not a stub.
    rec = json.loads((pretrained.reference_dir() / "mnist.json").read_text())
    assert rec["evaluation"]["heldout_accuracy"] >= 0.98
    caps = rec["evaluation"]["capsules"]
    assert caps["reconstruction_mse"] <= 0.0295 and caps["fig4_effect_max"] >= 0.04


# --------------------------------------------------------------------------- clear errors


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown reference model 'cifar'.*mnist"):
        pretrained.load("cifar")


def test_missing_file_names_it_and_the_command(tmp_path):
    _copy(tmp_path, "affine_cnn")
    (tmp_path / "affine_cnn.npz").unlink()
    with pytest.raises(pretrained.ReferenceModelError, match=r"affine_cnn\.npz: missing.*make reference-models"):
        pretrained.load("affine_cnn", tmp_path)


def test_corrupt_file_is_refused_by_its_checksum(tmp_path):
    _copy(tmp_path, "affine_cnn")
    blob = bytearray((tmp_path / "affine_cnn.npz").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (tmp_path / "affine_cnn.npz").write_bytes(bytes(blob))
    with pytest.raises(pretrained.ReferenceModelError, match=r"affine_cnn\.npz: SHA-256 .* does not match"):
        pretrained.load("affine_cnn", tmp_path)


def test_architecture_mismatch_names_the_weight(tmp_path):
    # A file that is intact (checksum right) but made for another architecture.
    _copy(tmp_path, "affine_cnn")
    with np.load(tmp_path / "affine_cnn.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["conv1/kernel"] = arrays["conv1/kernel"][..., :8]        # fewer filters than capslib builds
    arrays["extra/kernel"] = np.zeros(3, np.float16)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    (tmp_path / "affine_cnn.npz").write_bytes(buf.getvalue())
    rec = json.loads((tmp_path / "affine_cnn.json").read_text())
    rec["weights"]["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    (tmp_path / "affine_cnn.json").write_text(json.dumps(rec))
    with pytest.raises(pretrained.ReferenceModelError,
                       match=r"does not fit the architecture.*conv1/kernel: the file has \(5, 5, 1, 8\), capslib "
                             r"builds \(5, 5, 1, 64\).*extra/kernel: in the file.*make reference-models"):
        pretrained.load("affine_cnn", tmp_path)


# --------------------------------------------------------------------------- the machinery


def test_train_resume_export_load_round_trip(tmp_path):
    run, out = tmp_path / "run", tmp_path / "ref"
    first = pretrained.train("affine_cnn", out=run, smoke=(256, 1), verbose=0)
    assert len(first["epochs"]) == 1 and first["stopped"].startswith("reached max_epochs")
    with pytest.raises(pretrained.ReferenceModelError, match="has not finished"):
        json_path = run / "history.json"
        unfinished = json.loads(json_path.read_text())
        unfinished["stopped"] = None
        json_path.write_text(json.dumps(unfinished))
        pretrained.export("affine_cnn", run=run, directory=out)
    second = pretrained.train("affine_cnn", out=run, smoke=(256, 2), verbose=0)     # resumes at epoch 2
    assert [e["epoch"] for e in second["epochs"]] == [1, 2]
    assert second["epochs"][0] == first["epochs"][0]
    rec = pretrained.export("affine_cnn", run=run, directory=out)
    model, loaded = pretrained.load("affine_cnn", out)
    assert loaded == rec and rec["training"]["epochs_run"] == 2
    measured = pretrained.evaluate_model("affine_cnn", model)
    assert measured == {k: rec["evaluation"][k] for k in measured}


def test_decoder_stage_trains_the_decoder_and_nothing_else():
    import keras

    from capslib import data as capsdata
    ds = capsdata.subset(capsdata.load_mnist(), 128, 64)
    keras.utils.set_random_seed(0)
    model = pretrained._build(pretrained._arch("mnist"))
    before = {w.path: keras.ops.convert_to_numpy(w).copy() for w in model.weights}
    entries = pretrained.train_decoder(model, ds, epochs=2, copies=2, verbose=0)
    assert [e["epoch"] for e in entries] == [1, 2] and all(e["reconstruction_mse"] > 0 for e in entries)
    changed = {w.path for w in model.weights if not np.array_equal(keras.ops.convert_to_numpy(w), before[w.path])}
    assert {w.path for w in model.decoder.weights} == changed, sorted(changed)   # all of the decoder, nothing else


def test_mnist_record_shows_the_decoder_stage():
    # Stage 2 is in the record, and its effect is measured: the decoder alone, capsules frozen.
    t = json.loads((pretrained.reference_dir() / "mnist.json").read_text())["training"]
    stage = t["decoder_stage"]
    assert stage["epochs"] == len(stage["history"]) == pretrained.SPECS["mnist"]["decoder_stage"]["epochs"]
    assert stage["history"][-1]["reconstruction_mse"] < stage["reconstruction_mse_before"]


def test_book_model_is_the_reference_model_in_quick_mode(monkeypatch):
    monkeypatch.setenv("CAPSBOOK_MODE", "quick")
    model, record = pretrained.book_model()
    assert record["name"] == "mnist" and "weights" in record
    note = runmode.model_note(record)
    assert note.startswith("reference model `mnist`") and "make reference-models" in note


def test_list_prints_the_readme_table(capsys, tmp_path, monkeypatch):
    assert pretrained.main(["list"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].startswith("| name | parameters |") and len(rows) == 2 + len(pretrained.NAMES)
    for name, row in zip(pretrained.NAMES, rows[2:]):
        rec = json.loads((pretrained.reference_dir() / f"{name}.json").read_text())
        stage = rec["training"].get("decoder_stage")
        epochs = f"{rec['training']['epochs_run']}" + (f" + {stage['epochs']} decoder-only" if stage else "")
        assert row.startswith(f"| `{name}` | {rec['parameters']:,} | {epochs} |")
    monkeypatch.setenv("CAPSLIB_REFERENCE_DIR", str(tmp_path))      # nothing exported there
    pretrained.main(["list"])
    assert "not exported (run `make reference-models`)" in capsys.readouterr().out


def test_readme_reference_table_is_what_list_prints(capsys):
    # The README's table is pasted from `python -m capslib.pretrained list`: it must not drift.
    pretrained.main(["list"])
    table = capsys.readouterr().out.strip()
    readme = (pretrained.Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert table in readme, "README's reference-model table differs from `python -m capslib.pretrained list`"
