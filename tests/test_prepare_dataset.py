"""prepare_dataset.py on small synthesized collections: finding songs, clip shapes, bad files, reruns."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import prepare_dataset
from conftest import ROOT

SR = 8000
CLIP_S = 2.0
CLIP_SAMPLES = int(SR * CLIP_S)


def run_prepare(music, out, *extra, workers=1):
    """Run prepare_dataset in-process; return (exit code, manifest or None)."""
    code = prepare_dataset.main([str(music), "--out", str(out), "--sample-rate", str(SR),
                                 "--clip-seconds", str(CLIP_S), "--workers", str(workers), *extra])
    manifest_path = out / "manifest.json"
    return code, (json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.exists() else None)


def clips_of(manifest, source):
    return [c for c in manifest["clips"] if c["source"] == source]


def skip_reason(manifest, source):
    return next(s["reason"] for s in manifest["skipped"] if s["source"] == source)


def test_finds_nested_odd_names_in_any_case(tmp_path, make_song):
    music = tmp_path / "My Music"
    make_song(music / "plain.mp3", 2.5, seed=1)
    make_song(music / "Chopin – Études" / "Nocturne Op.9 №2 (live).MP3", 2.5, seed=2)
    make_song(music / "a" / "b" / "c" / "deep song.Mp3", 2.5, seed=3)
    make_song(music / "ignored.ogg", 2.5, seed=4)  # not asked for
    (music / "cover.txt").write_text("not music")

    code, manifest = run_prepare(music, tmp_path / "prepared", workers=2)

    assert code == 0
    assert sorted({c["source"] for c in manifest["clips"]}) == [
        "Chopin – Études/Nocturne Op.9 №2 (live).MP3", "a/b/c/deep song.Mp3", "plain.mp3"]
    for clip in manifest["clips"]:
        data = np.load(tmp_path / "prepared" / clip["file"], allow_pickle=False)
        assert data.dtype == np.float16 and data.shape == (2, CLIP_SAMPLES)
        assert clip["sample_rate"] == SR and clip["channels"] == 2 and clip["window"] == 0
        assert clip["peak"] == pytest.approx(float(np.abs(data.astype(np.float32)).max()), abs=1e-3)
        assert clip["source_size"] == os.path.getsize(tmp_path / "My Music" / clip["source"])


def test_extensions_widen_the_search_and_many_channels_mix_to_stereo(tmp_path, make_song):
    music = tmp_path / "music"
    make_song(music / "a.ogg", 2.5, seed=1)
    make_song(music / "b.FLAC", 2.5, seed=2)
    make_song(music / "surround.wav", 2.5, channels=6, seed=3)
    make_song(music / "c.mp3", 2.5, seed=4)

    code, manifest = run_prepare(music, tmp_path / "prepared", "--extensions", "ogg,flac,wav")

    assert code == 0
    assert sorted(c["source"] for c in manifest["clips"]) == ["a.ogg", "b.FLAC", "surround.wav"]
    surround = np.load(tmp_path / "prepared" / clips_of(manifest, "surround.wav")[0]["file"])
    assert surround.shape == (2, CLIP_SAMPLES)
    assert prepare_dataset.main([str(music), "--extensions", "mp3,aiff"]) == 2  # unknown type: an error


def test_mono_song_is_duplicated_to_two_channels(tmp_path, make_song):
    make_song(tmp_path / "music" / "mono.mp3", 2.5, channels=1)

    code, manifest = run_prepare(tmp_path / "music", tmp_path / "prepared")

    assert code == 0
    clip = np.load(tmp_path / "prepared" / manifest["clips"][0]["file"])
    assert clip.shape == (2, CLIP_SAMPLES)
    assert np.array_equal(clip[0], clip[1]) and np.abs(clip).max() > 0.1


def test_every_full_window_of_a_long_song_and_max_clips(tmp_path, make_song):
    # 7.3 s with 2 s windows, like a 7-minute song with 2-minute clips: 3 full windows.
    make_song(tmp_path / "music" / "long.mp3", 7.3)

    _, manifest = run_prepare(tmp_path / "music", tmp_path / "all")
    _, limited = run_prepare(tmp_path / "music", tmp_path / "limited", "--max-clips-per-song", "2")

    assert [c["window"] for c in manifest["clips"]] == [0, 1, 2]
    assert [c["window"] for c in limited["clips"]] == [0, 1]
    first = [np.load(tmp_path / "all" / c["file"]) for c in manifest["clips"]]
    assert not np.array_equal(first[0], first[1])  # consecutive windows, not the same audio again


def test_bad_files_are_skipped_with_reasons_and_never_stop_the_run(tmp_path, make_song):
    music = tmp_path / "music"
    make_song(music / "good.mp3", 2.5, seed=1)
    long_song = make_song(music / "long.mp3", 6.5, seed=2).read_bytes()
    (music / "truncated_long.mp3").write_bytes(long_song[: int(len(long_song) * 0.6)])  # ~3.9 s left
    short_song = make_song(music / "short_source.mp3", 3.0, seed=3).read_bytes()
    (music / "short_source.mp3").unlink()
    (music / "truncated_short.mp3").write_bytes(short_song[: len(short_song) // 3])  # ~1 s left
    (music / "garbage.mp3").write_bytes(np.random.default_rng(0).bytes(20000))
    (music / "empty.mp3").write_bytes(b"")
    (music / "readme.mp3").write_text("these are my liner notes, not audio\n" * 50)
    make_song(music / "too_short.mp3", 1.0, seed=4)
    (music / "silent.mp3").unlink(missing_ok=True)
    from conftest import write_audio
    write_audio(music / "silent.mp3", np.zeros((16000 * 3, 2), np.float32), 16000)

    code, manifest = run_prepare(music, tmp_path / "prepared", workers=2)

    assert code == 0
    kept = {c["source"] for c in manifest["clips"]}
    assert kept == {"good.mp3", "long.mp3", "truncated_long.mp3"}
    assert len(clips_of(manifest, "truncated_long.mp3")) == 1
    assert skip_reason(manifest, "empty.mp3") == "empty file"
    assert skip_reason(manifest, "garbage.mp3").startswith(("not audio", "too short"))
    assert skip_reason(manifest, "readme.mp3").startswith("not audio")
    assert skip_reason(manifest, "too_short.mp3").startswith("too short: 1.0 s < 2 s")
    assert skip_reason(manifest, "truncated_short.mp3").startswith("too short")
    assert skip_reason(manifest, "silent.mp3").startswith("silent")
    assert len(manifest["skipped"]) == 6


def test_exit_status_and_sentence_when_no_clip_can_be_made(tmp_path, make_song):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run([sys.executable, str(ROOT / "prepare_dataset.py"), str(empty), "--out",
                             str(tmp_path / "p1")], capture_output=True, text=True)
    assert result.returncode == 1
    assert f"no audio files found under {empty}" in result.stderr

    make_song(tmp_path / "shorts" / "a.mp3", 1.0)
    make_song(tmp_path / "shorts" / "b.mp3", 1.5)
    result = subprocess.run([sys.executable, str(ROOT / "prepare_dataset.py"), str(tmp_path / "shorts"),
                             "--out", str(tmp_path / "p2")], capture_output=True, text=True)
    assert result.returncode == 1
    assert "all 2 files were shorter than 120 s" in result.stderr


def test_rerun_converts_only_new_or_changed_files(tmp_path, make_song, capsys):
    music, out = tmp_path / "music", tmp_path / "prepared"
    make_song(music / "one.mp3", 2.5, seed=1)
    make_song(music / "two.mp3", 4.5, seed=2)
    _, first = run_prepare(music, out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")}
    capsys.readouterr()

    code, second = run_prepare(music, out)

    assert code == 0 and second["clips"] == first["clips"]
    assert "0 to convert, 2 up to date" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")} == stamps

    make_song(music / "two.mp3", 2.5, seed=9)  # changed: now gives one clip instead of two
    make_song(music / "three.mp3", 2.5, seed=3)  # new
    _, third = run_prepare(music, out)
    assert "2 to convert, 1 up to date" in capsys.readouterr().out
    assert len(clips_of(third, "two.mp3")) == 1 and len(clips_of(third, "three.mp3")) == 1
    assert clips_of(third, "one.mp3") == clips_of(first, "one.mp3")
    assert sorted(p.name for p in out.glob("*.npy")) == sorted(c["file"] for c in third["clips"])


def test_other_settings_never_overwrite_prepared_clips_by_surprise(tmp_path, make_song, capsys):
    music, out = tmp_path / "music", tmp_path / "prepared"
    make_song(music / "one.mp3", 4.5)
    _, first = run_prepare(music, out)
    before = {p.name: p.read_bytes() for p in out.glob("*.npy")}

    code = prepare_dataset.main([str(music), "--out", str(out), "--sample-rate", "16000", "--clip-seconds", "2"])

    assert code == 2
    assert "sample_rate=8000" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.glob("*.npy")} == before

    code = prepare_dataset.main([str(music), "--out", str(out), "--sample-rate", "16000", "--clip-seconds", "2",
                                 "--overwrite"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert code == 0 and manifest["settings"]["sample_rate"] == 16000
    assert all(np.load(out / c["file"]).shape == (2, 32000) for c in manifest["clips"])


def test_writes_are_atomic(tmp_path, monkeypatch):
    target = tmp_path / "clip.npy"

    def crash(file, array, allow_pickle):
        file.write(b"\x93NUMPY half a header")
        raise KeyboardInterrupt  # as if the run were killed mid-write

    monkeypatch.setattr(prepare_dataset.np, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset.save_atomically(target, np.zeros((2, 4), np.float16))
    assert list(tmp_path.iterdir()) == []


def test_two_workers_give_the_same_clips_as_one(tmp_path, make_song):
    for i in range(4):
        make_song(tmp_path / "music" / f"song{i}.mp3", 2.5, seed=i)

    _, serial = run_prepare(tmp_path / "music", tmp_path / "p1", workers=1)
    _, parallel = run_prepare(tmp_path / "music", tmp_path / "p2", workers=2)

    assert serial["clips"] == parallel["clips"]
    for clip in serial["clips"]:
        assert np.array_equal(np.load(tmp_path / "p1" / clip["file"]), np.load(tmp_path / "p2" / clip["file"]))


def test_files_ffmpeg_cannot_open_are_decoded_with_libsndfile(tmp_path, make_song, monkeypatch):
    make_song(tmp_path / "music" / "stereo.flac", 4.5, seed=1)
    make_song(tmp_path / "music" / "mono.ogg", 2.5, channels=1, seed=2)
    _, reference = run_prepare(tmp_path / "music", tmp_path / "by_ffmpeg", "--extensions", "flac,ogg")
    # As if ffmpeg's demuxer rejected every file (it does so for some real Ogg Vorbis headers).
    monkeypatch.setattr(prepare_dataset, "ffmpeg_command",
                        lambda path, rate: ["ffmpeg", "-v", "error", "-f", "no_such_format", "-i", str(path), "-"])

    code, manifest = run_prepare(tmp_path / "music", tmp_path / "by_libsndfile", "--extensions", "flac,ogg")

    assert code == 0
    assert [(c["source"], c["window"]) for c in manifest["clips"]] == [(c["source"], c["window"]) for c in reference["clips"]]
    assert all("decoded with libsndfile" in c["note"] for c in manifest["clips"])
    assert not any("note" in c for c in reference["clips"])
    for ours, theirs in zip(manifest["clips"], reference["clips"]):
        a = np.load(tmp_path / "by_libsndfile" / ours["file"]).astype(np.float32)
        b = np.load(tmp_path / "by_ffmpeg" / theirs["file"]).astype(np.float32)
        assert a.shape == b.shape == (2, CLIP_SAMPLES)
        # Two resamplers, so not bit-equal: the same music to within a few percent of its level.
        assert np.abs(a - b).mean() < 0.05 * np.abs(b).mean()
    mono = np.load(tmp_path / "by_libsndfile" / clips_of(manifest, "mono.ogg")[0]["file"])
    assert np.array_equal(mono[0], mono[1])
