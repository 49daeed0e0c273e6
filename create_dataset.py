"""Cut prepared clips into [start, continuation] pairs: the training and validation sets MusiGAN trains on.

    python create_dataset.py prepared --out dataset
    python create_dataset.py prepared --out dataset --chunk-seconds 10 --val-fraction 0.1 --seed 0

Each clip from prepare_dataset.py is cut into chunks of --chunk-seconds; chunks 2i and 2i+1 form a pair.
Songs are split between training and validation as a whole, so no song is in both (with a single song,
its pairs are split instead, and this says so). The output folder holds:

    training_set.npy    float16 (pairs, 2, channels, chunk_samples), no pickle, memory-mappable
    validation_set.npy  the same layout
    dataset.json        sample rate, channels, chunk_samples, pair counts, global peak, songs per split

The arrays are streamed to disk, so RAM stays far below their size. Training opens them with
np.load(path, mmap_mode="r").
"""

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from prepare_dataset import MANIFEST_NAME, PrepareError, load_manifest

DATASET_INFO = "dataset.json"
SPLIT_FILES = {"training": "training_set.npy", "validation": "validation_set.npy"}
DATASET_VERSION = 1


class DatasetError(Exception):
    """A problem with the prepared clips or the dataset folder, worded for the user."""


def how_to_make(dataset_dir):
    return (f"Make one with:\n    python prepare_dataset.py ~/Music --out prepared\n"
            f"    python create_dataset.py prepared --out {dataset_dir}")


def load_dataset_info(dataset_dir):
    """dataset.json of dataset_dir as a dict, after checking that the folder is complete."""
    dataset_dir = Path(dataset_dir)
    info_path = dataset_dir / DATASET_INFO
    if not info_path.exists():
        raise DatasetError(f"no dataset at {dataset_dir} ({DATASET_INFO} is missing). {how_to_make(dataset_dir)}")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if info.get("format_version") != DATASET_VERSION:
            raise ValueError(f"format_version {info.get('format_version')!r}, expected {DATASET_VERSION}")
        for key in ("sample_rate", "channels", "chunk_samples", "pairs", "peak"):
            info[key]  # noqa: B018  (presence check)
    except (ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{info_path} cannot be read ({e}). {how_to_make(dataset_dir)}") from e
    for split, name in SPLIT_FILES.items():
        if not (dataset_dir / name).exists():
            raise DatasetError(f"{dataset_dir / name} is missing although {DATASET_INFO} lists "
                               f"{info['pairs'][split]} {split} pairs. {how_to_make(dataset_dir)}")
    return info


# ---------------------------------------------------------------------------------------------
# Planning: which pairs of which clip go to which split


def plan_split(clips_by_song, pairs_per_clip, val_fraction, seed):
    """{split: [(clip_file, first_pair, n_pairs), ...]}, the songs in each split, and how it split.

    Songs are shuffled with `seed` and whole songs go to validation. With one song there is nothing
    to hold out, so the last pairs of that song become the validation set instead.
    """
    songs = sorted(clips_by_song)
    rng = np.random.default_rng(seed)
    songs = [songs[i] for i in rng.permutation(len(songs))]
    segments = {"training": [], "validation": []}
    if len(songs) == 1 and val_fraction > 0:
        pairs = [(clip, p) for clip in clips_by_song[songs[0]] for p in range(pairs_per_clip)]
        n_val = min(len(pairs) - 1, max(1, round(len(pairs) * val_fraction)))
        for split, chosen in (("training", pairs[:len(pairs) - n_val]), ("validation", pairs[len(pairs) - n_val:])):
            for clip, p in chosen:  # merge runs of consecutive pairs of one clip
                last = segments[split][-1] if segments[split] else None
                if last and last[0] == clip and last[1] + last[2] == p:
                    segments[split][-1] = (clip, last[1], last[2] + 1)
                else:
                    segments[split].append((clip, p, 1))
        songs_in = {"training": songs, "validation": songs if n_val else []}
        return segments, songs_in, "within_song"
    n_val = 0 if val_fraction == 0 else min(len(songs) - 1, max(1, round(len(songs) * val_fraction)))
    songs_in = {"validation": sorted(songs[:n_val]), "training": sorted(songs[n_val:])}
    for split, names in songs_in.items():
        for song in names:
            segments[split] += [(clip, 0, pairs_per_clip) for clip in clips_by_song[song]]
    return segments, songs_in, "by_song"


# ---------------------------------------------------------------------------------------------
# Writing


def load_clip(prepared_dir, name, channels, clip_samples):
    path = prepared_dir / name
    if not path.exists():
        raise DatasetError(f"{path} is listed in {MANIFEST_NAME} but missing; run prepare_dataset.py again "
                           f"to remake it")
    try:
        clip = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DatasetError(f"{path} cannot be read ({e}); delete it and run prepare_dataset.py again") from e
    if clip.dtype != np.float16 or clip.shape != (channels, clip_samples):
        raise DatasetError(f"{path} holds {clip.dtype} {clip.shape}, but {MANIFEST_NAME} promises float16 "
                           f"({channels}, {clip_samples}); run prepare_dataset.py again with --overwrite")
    return clip


def write_split(path, segments, prepared_dir, channels, clip_samples, chunk_samples, bar):
    """Stream the pairs of `segments` into a new .npy at path (atomically); return the pair count.

    open_memmap writes the header and sizes the file; each clip's pairs then go through a short-lived
    mapping of just their region, so written pages leave this process as soon as they are flushed.
    """
    n_pairs = sum(count for _, _, count in segments)
    shape = (n_pairs, 2, channels, chunk_samples)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    header = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
    data_offset = header.offset
    del header
    pair_bytes = 2 * channels * chunk_samples * np.dtype(np.float16).itemsize
    written = 0
    try:
        for clip_file, first, count in segments:
            clip = load_clip(prepared_dir, clip_file, channels, clip_samples)  # (C, clip_samples)
            span = clip[:, first * 2 * chunk_samples:(first + count) * 2 * chunk_samples]
            block = span.reshape(channels, count, 2, chunk_samples).transpose(1, 2, 0, 3)  # (count, 2, C, T)
            if count:
                region = np.memmap(tmp, dtype=np.float16, mode="r+", shape=(count, 2, channels, chunk_samples),
                                   offset=data_offset + written * pair_bytes)
                region[:] = block
                region.flush()
                del region
            written += count
            bar.update()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return n_pairs


def create(args):
    prepared_dir = Path(args.prepared).expanduser()
    out_dir = Path(args.out).expanduser()
    manifest = load_manifest(prepared_dir / MANIFEST_NAME)
    if manifest is None:
        raise DatasetError(f"{prepared_dir / MANIFEST_NAME} not found. Run first:\n"
                           f"    python prepare_dataset.py ~/Music --out {prepared_dir}")
    if not manifest["clips"]:
        raise DatasetError(f"{prepared_dir / MANIFEST_NAME} lists no clips; see prepare_dataset.py's summary "
                           f"for why every song was skipped")
    settings = manifest["settings"]
    sample_rate, channels, clip_samples = settings["sample_rate"], settings["channels"], settings["clip_samples"]
    chunk_samples = round(args.chunk_seconds * sample_rate)
    pairs_per_clip = clip_samples // chunk_samples // 2
    if pairs_per_clip == 0:
        raise DatasetError(f"--chunk-seconds {args.chunk_seconds:g} is too long: a pair needs two chunks, "
                           f"and the clips in {prepared_dir} are {settings['clip_seconds']:g} s. Use at most "
                           f"--chunk-seconds {settings['clip_seconds'] / 2:g}.")
    existing = [out_dir / name for name in (*SPLIT_FILES.values(), DATASET_INFO) if (out_dir / name).exists()]
    if existing and not args.overwrite:
        raise DatasetError(f"{existing[0]} already exists. Choose another --out folder, or add --overwrite "
                           f"to replace the dataset there.")

    clips_by_song = {}
    for clip in sorted(manifest["clips"], key=lambda c: (c["source"], c["window"])):
        clips_by_song.setdefault(clip["source"], []).append(clip["file"])
    segments, songs_in, how = plan_split(clips_by_song, pairs_per_clip, args.val_fraction, args.seed)
    if how == "within_song":
        print(f"Only one song ({next(iter(clips_by_song))}): its last pairs form the validation set, so "
              f"validation measures continuation of a song the model has heard, not generalization.")
    elif args.val_fraction > 0 and len(clips_by_song) > 1:
        print(f"{len(songs_in['training'])} songs for training, {len(songs_in['validation'])} for validation "
              f"(split by song, seed {args.seed}).")

    out_dir.mkdir(parents=True, exist_ok=True)
    if args.overwrite:  # an old dataset.json must never describe new arrays
        (out_dir / DATASET_INFO).unlink(missing_ok=True)
    pair_counts = {}
    total_clips = sum(len(s) for s in segments.values())
    with tqdm(total=total_clips, unit="clip", dynamic_ncols=True, desc="writing") as bar:
        for split, name in SPLIT_FILES.items():
            pair_counts[split] = write_split(out_dir / name, segments[split], prepared_dir, channels,
                                             clip_samples, chunk_samples, bar)
    used = {clip for split in segments.values() for clip, _, _ in split}
    peak = max(c["peak"] for c in manifest["clips"] if c["file"] in used)
    info = {
        "format_version": DATASET_VERSION,
        "sample_rate": sample_rate,
        "channels": channels,
        "chunk_seconds": args.chunk_seconds,
        "chunk_samples": chunk_samples,
        "dtype": "float16",
        "layout": "(pairs, 2, channels, chunk_samples): chunk 0 is a start, chunk 1 its continuation",
        "pairs": pair_counts,
        "peak": peak,
        "split": how,
        "val_fraction": args.val_fraction,
        "seed": args.seed,
        "songs": songs_in,
        "prepared": str(prepared_dir.resolve()),
    }
    tmp = out_dir / f".{DATASET_INFO}.tmp"
    tmp.write_text(json.dumps(info, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, out_dir / DATASET_INFO)

    gib = sum(pair_counts.values()) * 2 * channels * chunk_samples * 2 / 2**30
    hours = sum(pair_counts.values()) * 2 * chunk_samples / sample_rate / 3600
    print(f"Wrote {out_dir}: {pair_counts['training']} training and {pair_counts['validation']} validation "
          f"pairs of {args.chunk_seconds:g} s chunks ({hours:.2f} h, {gib:.2f} GiB), {sample_rate} Hz, "
          f"{channels} channels, peak {peak:.3f}.")
    if pair_counts["validation"] == 0:
        print("Note: the validation set is empty, so training cannot report validation figures.")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prepared", nargs="?", default="prepared",
                        help="folder written by prepare_dataset.py (default: prepared)")
    parser.add_argument("--out", default="dataset", help="folder for the dataset (default: dataset)")
    parser.add_argument("--chunk-seconds", type=float, default=10,
                        help="length of each chunk in seconds; a pair is two chunks (default: 10)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of songs held out for validation, 0 to 1 (default: 0.1; at least one song when above 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle that splits the songs (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not args.chunk_seconds > 0:
        print(f"error: --chunk-seconds must be positive, got {args.chunk_seconds}", file=sys.stderr)
        return 2
    if not 0 <= args.val_fraction < 1 or math.isnan(args.val_fraction):
        print(f"error: --val-fraction must be at least 0 and below 1, got {args.val_fraction}", file=sys.stderr)
        return 2
    try:
        return create(args)
    except (DatasetError, PrepareError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
