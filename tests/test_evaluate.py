"""evaluate.py: the Fréchet distance must rank what a listener would rank, and training must log it."""

import csv
import json

import numpy as np
import pytest
from scipy.signal import butter, sosfilt

import evaluate
import piano_main
from conftest import synth_song, tiny_config, write_audio
from utilities import resolve_epoch

SR = 12000


@pytest.fixture(scope="module")
def songs():
    return {"a": [synth_song(6, SR, 2, seed=i).T for i in range(3)],
            "b": [synth_song(6, SR, 2, seed=20 + i).T for i in range(3)]}


def test_real_against_real_is_far_closer_than_real_against_white_noise(songs):
    noise = [np.random.default_rng(i).standard_normal((2, 6 * SR)).astype(np.float32) for i in range(3)]
    same = evaluate.compare(songs["a"], songs["b"], SR)
    far = evaluate.compare(songs["a"], noise, SR)
    assert same["frechet"] * 10 < far["frechet"]
    assert far["gaps"]["flatness"]["wasserstein"] > 10 * same["gaps"]["flatness"]["wasserstein"]


def test_real_against_real_is_closer_than_real_against_real_low_passed_at_1_khz(songs):
    sos = butter(8, 1000, "low", fs=SR, output="sos")
    low_passed = [sosfilt(sos, clip, axis=1).astype(np.float32) for clip in songs["b"]]
    same = evaluate.compare(songs["a"], songs["b"], SR)
    dull = evaluate.compare(songs["a"], low_passed, SR)
    assert same["frechet"] < dull["frechet"]
    assert dull["gaps"]["centroid_hz"]["fake"] < same["gaps"]["centroid_hz"]["fake"]
    # The balance names where: the low-passed clips lose their top bands against the same clips unfiltered.
    balance = np.asarray(evaluate.compare(songs["b"], low_passed, SR)["balance_db"])
    assert len(balance) == evaluate.N_MELS
    assert balance[18:30].mean() < -10 and abs(balance[:12].mean()) < 2  # bands 18-30: about 1.3-3 kHz


def test_frechet_distance_of_known_gaussians():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 3))
    b = rng.standard_normal((4000, 3)) * 2 + np.array([1.0, 0.0, 0.0])
    # |mu|^2 = 1; each dimension: 1 + 4 - 2 * sqrt(1 * 4) = 1, so 3 in all: 4.
    assert evaluate.frechet_distance(a, b) == pytest.approx(4.0, rel=0.05)
    assert evaluate.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-3)


def test_the_folder_cli_prints_a_table_and_ends_with_json(songs, tmp_path, capsys):
    for name, clips in songs.items():
        for i, clip in enumerate(clips):
            write_audio(tmp_path / name / f"{i}.wav", clip.T, SR)
    assert evaluate.main(["--real", str(tmp_path / "a"), "--fake", str(tmp_path / "b")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("Fréchet distance") and "centroid_hz" in "\n".join(lines)
    assert json.loads(lines[-1])["frechet"] > 0
    assert evaluate.main(["--real", str(tmp_path / "a"), "--fake", str(tmp_path / "nothing")]) == 2


def test_training_logs_the_frechet_distance(tmp_path, dataset, capsys):
    config = tiny_config(tmp_path, dataset, training={"epochs": 2, "keys": 8, "eval_every": 1, "eval_samples": 4})
    assert piano_main.main(["--config", str(config)]) == 0
    with open(tmp_path / "ck" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(float(row["val/frechet"]) > 0 for row in rows)
    assert "Fréchet" in capsys.readouterr().out
    assert evaluate.main(["--epoch", "latest", "--config", str(config), "--samples", "4"]) == 0
    # Every epoch measured and saved: best is the one metrics.csv gives the lowest distance
    closest = min(rows, key=lambda row: float(row["val/frechet"]))
    assert resolve_epoch(tmp_path / "ck", "best", log=lambda *_: None) == int(closest["epoch"])


def test_join_report_catches_a_click_and_a_dip():
    from evaluate import join_report

    sr = 8000
    t = np.arange(4 * sr) / sr
    smooth = np.sin(2 * np.pi * 220 * t) * (0.5 + 0.2 * np.sin(2 * np.pi * 0.7 * t))
    joins = [sr, 2 * sr, 3 * sr]
    clean = join_report(smooth, joins, sr)
    assert max(clean["jump_ratio"]) <= 3 and max(map(abs, clean["rms_gap_db"])) <= 3
    clicked = smooth.copy()
    clicked[2 * sr:] += 0.8  # a step at the second join
    assert join_report(clicked, joins, sr)["jump_ratio"][1] > 3
    dipped = smooth.copy()
    dipped[3 * sr - 150:3 * sr + 150] *= np.hanning(300) * 0 + 0.1  # a crossfade that loses level
    assert join_report(dipped, joins, sr)["rms_gap_db"][2] < -3
