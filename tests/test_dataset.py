"""create_dataset.py, split_and_append_chunks and AudioDataset on prepared clips made in tmp_path."""

import json
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import create_dataset
from conftest import ROOT
from piano_model import AudioDataset
from split_and_append_chunks import split_and_append_chunks

SR = 8000
CLIP_SAMPLES = 4 * SR  # 4 s clips
CHUNK_SAMPLES = SR  # 1 s chunks: 2 pairs per clip


def fake_prepared(folder, clips_per_song, sample_rate=SR, clip_samples=CLIP_SAMPLES, seed=0):
    """A prepared/ folder as prepare_dataset.py writes it, with random clips: {song: n_clips}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    clips = []
    for song, n_clips in clips_per_song.items():
        for window in range(n_clips):
            name = f"{song}_{window:03d}.npy"
            data = (rng.standard_normal((2, clip_samples), dtype=np.float32) * 0.2).astype(np.float16)
            np.save(folder / name, data)
            clips.append({"file": name, "source": f"{song}.mp3", "window": window, "sample_rate": sample_rate,
                          "channels": 2, "samples": clip_samples, "peak": float(np.abs(data).max()),
                          "source_size": 1, "source_mtime": 0.0})
    settings = {"sample_rate": sample_rate, "channels": 2, "clip_seconds": clip_samples / sample_rate,
                "clip_samples": clip_samples, "dtype": "float16", "max_clips_per_song": 0}
    (folder / "manifest.json").write_text(json.dumps({"format_version": 1, "settings": settings,
                                                      "clips": clips, "skipped": []}))
    return clips


def run_create(prepared, out, *extra):
    return create_dataset.main([str(prepared), "--out", str(out), "--chunk-seconds", "1", *extra])


def test_pairs_are_consecutive_chunks_split_by_song(tmp_path):
    clips = fake_prepared(tmp_path / "prepared", {f"song{i}": 1 + i % 3 for i in range(10)})

    assert run_create(tmp_path / "prepared", tmp_path / "dataset", "--val-fraction", "0.3", "--seed", "3") == 0

    info = json.loads((tmp_path / "dataset" / "dataset.json").read_text())
    train = np.load(tmp_path / "dataset" / "training_set.npy", mmap_mode="r", allow_pickle=False)
    val = np.load(tmp_path / "dataset" / "validation_set.npy", mmap_mode="r", allow_pickle=False)
    assert isinstance(train, np.memmap) and train.dtype == np.float16 and val.dtype == np.float16
    assert train.shape[1:] == val.shape[1:] == (2, 2, CHUNK_SAMPLES)
    assert (info["sample_rate"], info["channels"], info["chunk_samples"]) == (SR, 2, CHUNK_SAMPLES)
    assert info["pairs"] == {"training": len(train), "validation": len(val)}
    assert len(train) + len(val) == 2 * len(clips)
    assert len(info["songs"]["validation"]) == 3 and len(info["songs"]["training"]) == 7
    assert not set(info["songs"]["validation"]) & set(info["songs"]["training"])
    assert info["peak"] == max(c["peak"] for c in clips)

    # Every pair is [chunk 2i, chunk 2i+1] of one clip, and each split holds exactly its songs' clips.
    for split, array in (("training", train), ("validation", val)):
        expected = []
        for clip in clips:
            if clip["source"] in info["songs"][split]:
                data = np.load(tmp_path / "prepared" / clip["file"])
                expected += [data[:, 2 * p * CHUNK_SAMPLES:(2 * p + 2) * CHUNK_SAMPLES]
                             .reshape(2, 2, CHUNK_SAMPLES).transpose(1, 0, 2) for p in range(2)]
        got = sorted(np.asarray(array), key=lambda pair: pair.tobytes())
        assert np.array_equal(np.stack(got), np.stack(sorted(expected, key=lambda pair: pair.tobytes())))


def test_the_seed_changes_which_songs_are_held_out(tmp_path):
    fake_prepared(tmp_path / "prepared", {f"song{i}": 1 for i in range(12)})
    held_out = []
    for seed in (0, 0, 1):
        run_create(tmp_path / "prepared", tmp_path / f"d{len(held_out)}", "--val-fraction", "0.25", "--seed", str(seed))
        held_out.append(json.loads((tmp_path / f"d{len(held_out)}" / "dataset.json").read_text())["songs"]["validation"])
    assert held_out[0] == held_out[1] != held_out[2]


def test_a_single_song_is_split_within_and_says_so(tmp_path, capsys):
    fake_prepared(tmp_path / "prepared", {"only": 5})  # 10 pairs

    assert run_create(tmp_path / "prepared", tmp_path / "dataset", "--val-fraction", "0.2") == 0

    assert "Only one song (only.mp3)" in capsys.readouterr().out
    info = json.loads((tmp_path / "dataset" / "dataset.json").read_text())
    assert info["split"] == "within_song" and info["pairs"] == {"training": 8, "validation": 2}
    last_clip = np.load(tmp_path / "prepared" / "only_004.npy")
    val = np.load(tmp_path / "dataset" / "validation_set.npy")
    assert np.array_equal(val[0, 0], last_clip[:, :CHUNK_SAMPLES])  # the held-out pairs are the song's last


def test_existing_dataset_is_not_overwritten_by_surprise(tmp_path, capsys):
    fake_prepared(tmp_path / "prepared", {"a": 1, "b": 1})
    run_create(tmp_path / "prepared", tmp_path / "dataset")
    before = (tmp_path / "dataset" / "training_set.npy").read_bytes()

    fake_prepared(tmp_path / "prepared", {"a": 1, "b": 1}, seed=5)
    assert run_create(tmp_path / "prepared", tmp_path / "dataset") == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "dataset" / "training_set.npy").read_bytes() == before

    assert run_create(tmp_path / "prepared", tmp_path / "dataset", "--overwrite") == 0
    assert (tmp_path / "dataset" / "training_set.npy").read_bytes() != before


def test_bad_input_gets_a_sentence(tmp_path, capsys):
    assert run_create(tmp_path / "nothing", tmp_path / "dataset") == 2
    assert "prepare_dataset.py" in capsys.readouterr().err
    fake_prepared(tmp_path / "prepared", {"a": 1})
    assert create_dataset.main([str(tmp_path / "prepared"), "--out", str(tmp_path / "d"), "--chunk-seconds", "3"]) == 2
    assert "Use at most --chunk-seconds 2" in capsys.readouterr().err
    (tmp_path / "prepared" / "a_000.npy").unlink()
    assert run_create(tmp_path / "prepared", tmp_path / "d2") == 2
    assert "a_000.npy is listed in manifest.json but missing" in capsys.readouterr().err
    with pytest.raises(create_dataset.DatasetError, match="python create_dataset.py prepared --out"):
        create_dataset.load_dataset_info(tmp_path / "no_dataset")


def test_output_is_streamed_so_peak_rss_stays_far_below_its_size(tmp_path):
    # 56 songs x 1 clip x 240 s at 8 kHz stereo float16 = 410 MiB of output.
    fake_prepared(tmp_path / "prepared", {f"s{i}": 1 for i in range(56)}, clip_samples=240 * SR)
    script = textwrap.dedent(f"""
        import re, sys
        sys.path.insert(0, {str(ROOT)!r})
        import create_dataset
        code = create_dataset.main([{str(tmp_path / 'prepared')!r}, "--out", {str(tmp_path / 'dataset')!r}])
        # VmHWM, this program's own peak: ru_maxrss survives exec, so it would carry a large parent's RSS at fork
        # (a test process that trained a model before this one)
        print(int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) // 1024)
        sys.exit(code)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    peak_rss_mib = int(result.stdout.split()[-1])
    output_mib = sum(f.stat().st_size for f in (tmp_path / "dataset").glob("*.npy")) / 2**20
    assert output_mib > 400
    assert peak_rss_mib < 0.25 * output_mib + 300, (peak_rss_mib, output_mib)


def test_split_and_append_chunks_is_a_view_in_pair_order(tmp_path):
    pairs = np.arange(3 * 2 * 2 * 5, dtype=np.float16).reshape(3, 2, 2, 5)
    np.save(tmp_path / "pairs.npy", pairs)
    mapped = np.load(tmp_path / "pairs.npy", mmap_mode="r")

    for source in (pairs, mapped):
        chunks = split_and_append_chunks(source)
        assert chunks.shape == (6, 2, 5) and np.shares_memory(chunks, source)
        assert np.array_equal(chunks[3], pairs[1, 1]) and np.array_equal(chunks[4], pairs[2, 0])
    assert isinstance(split_and_append_chunks(mapped), np.memmap)
    tensor = torch.from_numpy(pairs.astype(np.float32))
    assert split_and_append_chunks(tensor).data_ptr() == tensor.data_ptr()
    with pytest.raises(ValueError, match="no view"):
        split_and_append_chunks(np.zeros((4, 2, 2, 5))[::2])
    with pytest.raises(ValueError, match=r"\(N, 2, channels, samples\)"):
        split_and_append_chunks(np.zeros((4, 3, 2, 5)))


@pytest.fixture
def dataset_dir(tmp_path):
    fake_prepared(tmp_path / "prepared", {f"song{i}": 2 for i in range(4)})
    run_create(tmp_path / "prepared", tmp_path / "dataset", "--val-fraction", "0.25")
    return tmp_path / "dataset"


def test_audio_dataset_normalizes_a_crop_of_the_right_chunk(dataset_dir):
    info = json.loads((dataset_dir / "dataset.json").read_text())
    seq_len = 3000
    dataset = AudioDataset.from_dataset_dir(dataset_dir, "training", seq_len)
    chunks = split_and_append_chunks(np.load(dataset_dir / "training_set.npy")).astype(np.float32)
    assert len(dataset) == len(chunks) == 2 * info["pairs"]["training"]

    torch.manual_seed(0)
    for index in (0, 5, len(dataset) - 1):
        target_norm, target_mean, target_std = dataset[index]
        assert target_norm.dtype == target_mean.dtype == target_std.dtype == torch.float32
        assert target_norm.shape == (2, seq_len) and target_mean.shape == target_std.shape == (1, 1)
        assert abs(float(target_norm.mean())) < 1e-4 and float(target_norm.std(correction=0)) == pytest.approx(1, abs=1e-4)
        raw = (target_norm * target_std + target_mean).numpy() * info["peak"]
        # The crop is a window of this chunk: find where it starts.
        starts = [s for s in range(CHUNK_SAMPLES - seq_len + 1) if np.allclose(chunks[index][:, s:s + seq_len], raw, atol=1e-3)]
        assert len(starts) == 1


def test_audio_dataset_crops_are_random_but_seeded(dataset_dir):
    dataset = AudioDataset.from_dataset_dir(dataset_dir, "training", 3000)
    torch.manual_seed(1)
    first = [dataset[0][0] for _ in range(4)]
    torch.manual_seed(1)
    again = [dataset[0][0] for _ in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(first[0], other) for other in first[1:])
    validation = AudioDataset.from_dataset_dir(dataset_dir, "validation", 3000)  # start crop: repeatable
    assert torch.equal(validation[1][0], validation[1][0])


def test_audio_dataset_silent_chunk_stays_finite():
    chunks = np.zeros((2, 2, 100), np.float16)
    chunks[1] = 0.5
    target_norm, _, target_std = AudioDataset(chunks, 50)[0]
    assert torch.isfinite(target_norm).all() and float(target_norm.abs().max()) == 0
    assert AudioDataset(chunks, 50)[1][0].abs().max() == 0  # constant chunk: zero after standardization


def test_audio_dataset_rejects_seq_len_longer_than_a_chunk(dataset_dir):
    with pytest.raises(create_dataset.DatasetError, match="seq_len 9000 does not fit the dataset's chunks of 8000"):
        AudioDataset.from_dataset_dir(dataset_dir, "training", 9000)


def test_audio_dataset_pickles_to_its_path_and_works_with_worker_processes(dataset_dir):
    dataset = AudioDataset.from_dataset_dir(dataset_dir, "training", 2000)
    assert len(pickle.dumps(dataset)) < 4096  # the array itself never travels to a worker
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2, shuffle=True)
    batches = list(loader)
    assert sum(len(b[0]) for b in batches) == len(dataset)
    assert batches[0][0].shape == (4, 2, 2000) and batches[0][1].shape == (4, 1, 1)


def test_reading_the_whole_dataset_keeps_rss_flat(tmp_path):
    # 24 songs x 1 clip x 240 s: a 176 MiB training set, read from end to end in a fresh process.
    fake_prepared(tmp_path / "prepared", {f"s{i}": 1 for i in range(24)}, clip_samples=240 * SR)
    create_dataset.main([str(tmp_path / "prepared"), "--out", str(tmp_path / "dataset"), "--chunk-seconds", "10",
                         "--val-fraction", "0"])
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        import psutil
        from piano_model import AudioDataset
        dataset = AudioDataset.from_dataset_dir({str(tmp_path / 'dataset')!r}, "training", 80000)
        dataset[0]
        before = psutil.Process().memory_info().rss
        for i in range(len(dataset)):
            dataset[i]
        print((psutil.Process().memory_info().rss - before) // 2**20)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    size_mib = (tmp_path / "dataset" / "training_set.npy").stat().st_size / 2**20
    assert size_mib > 160
    assert int(result.stdout.split()[-1]) < 20
