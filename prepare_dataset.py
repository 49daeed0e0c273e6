"""Turn a folder of music into fixed-length stereo clips, the first step of MusiGAN's pipeline.

    python prepare_dataset.py ~/Music --out prepared
    python prepare_dataset.py ~/Music --out prepared --extensions mp3,ogg,flac --workers 2
    python prepare_dataset.py ~/Music --out prepared --clip-seconds 60 --max-clips-per-song 2

Every song found under MUSIC_DIR (recursively, any letter case) is decoded with ffmpeg, resampled
to --sample-rate and made stereo (mono is copied to both channels, at -3 dB each as ffmpeg pans it;
more channels are mixed down). It is cut into
non-overlapping windows of exactly --clip-seconds; each window becomes one float16 [2, samples] .npy
file in --out, and manifest.json records where every clip came from.

Files that cannot be used (corrupt, empty, not audio, shorter than one clip, silent) are skipped with
a reason and never stop the run. A rerun converts only new or changed files. The exit status is
non-zero only when no clip at all exists afterwards.

Next step: python create_dataset.py prepared --out dataset
"""

import argparse
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
CHANNELS = 2
SILENCE_PEAK = 1e-4  # a window whose peak is below -80 dBFS holds nothing worth learning
KNOWN_EXTENSIONS = ("mp3", "wav", "flac", "ogg", "opus", "m4a")


class PrepareError(Exception):
    """A problem with the user's input or output folder, worded for the user."""


# ---------------------------------------------------------------------------------------------
# Finding songs


def parse_extensions(text):
    """'mp3, .OGG,flac' -> ('mp3', 'ogg', 'flac'); unknown extensions are an error."""
    extensions = tuple(dict.fromkeys(e.strip().lower().lstrip(".") for e in text.split(",") if e.strip()))
    unknown = [e for e in extensions if e not in KNOWN_EXTENSIONS]
    if not extensions or unknown:
        raise PrepareError(
            f"--extensions {text!r}: {', '.join(unknown) or 'nothing given'} is not supported; "
            f"choose from {','.join(KNOWN_EXTENSIONS)}"
        )
    return extensions


def find_audio_files(music_dir, extensions):
    """Every file under music_dir whose extension (any letter case) is in extensions, sorted."""
    wanted = {"." + e for e in extensions}
    found = []
    for folder, dirnames, filenames in os.walk(music_dir):
        dirnames.sort()
        for name in sorted(filenames):
            if os.path.splitext(name)[1].lower() in wanted:
                found.append(Path(folder, name))
    return found


def clip_file_name(source_rel, window):
    """A stable, filesystem-safe, unique name for window `window` of the song at source_rel."""
    stem = unicodedata.normalize("NFKD", Path(source_rel).stem).encode("ascii", "ignore").decode()
    stem = re.sub(r"[^A-Za-z0-9]+", "_", stem).strip("_")[:40] or "song"
    digest = hashlib.sha1(source_rel.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{stem}-{digest}_{window:03d}.npy"


# ---------------------------------------------------------------------------------------------
# Decoding one song (runs in a worker process)


def ffmpeg_command(path, sample_rate):
    # First audio stream only (cover art and video are ignored), stereo, resampled, float32 on stdout.
    return [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(path),
        "-map", "0:a:0", "-vn", "-ac", str(CHANNELS), "-ar", str(sample_rate), "-f", "f32le", "-",
    ]


def describe_ffmpeg_error(stderr_text):
    """The last meaningful line ffmpeg printed, shortened, for a skip reason."""
    lines = [line.strip() for line in stderr_text.splitlines() if line.strip()]
    if not lines:
        return "no detail from ffmpeg"
    # ffmpeg prefixes the input path; the manifest names the file already.
    return re.sub(r"^.*?: ", "", lines[-1], count=1)[:200]


def save_atomically(path, array):
    """np.save to a temporary name in the same folder, then rename: never a half-written .npy."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_exactly(stream, buffer):
    """Fill `buffer` from `stream`; return the number of bytes read (short only at end of stream)."""
    view = memoryview(buffer)
    filled = 0
    while filled < len(view):
        n = stream.readinto(view[filled:])
        if not n:
            break
        filled += n
    return filled


def ffmpeg_windows(path, sample_rate, clip_samples, outcome):
    """Yield each full window of the song as float32 (clip_samples, 2), decoded by an ffmpeg process.

    The song streams through a one-window buffer, so memory does not grow with its length. Fills
    `outcome` with seconds decoded, whether the decoder failed, and what it printed.
    """
    clip_bytes = clip_samples * CHANNELS * 4
    buffer = bytearray(clip_bytes)
    with tempfile.TemporaryFile() as stderr_file:  # a file, not a pipe: a chatty ffmpeg never blocks
        proc = subprocess.Popen(ffmpeg_command(path, sample_rate), stdout=subprocess.PIPE,
                                stderr=stderr_file, bufsize=0)
        finished = False
        try:
            while True:
                got = read_exactly(proc.stdout, buffer)
                outcome["seconds"] += got / (CHANNELS * 4 * sample_rate)
                if got < clip_bytes:
                    finished = True
                    break  # the remainder is shorter than a window: dropped, as the design says
                yield np.frombuffer(buffer, dtype=np.float32).reshape(clip_samples, CHANNELS)
        finally:  # also when the consumer stops early (--max-clips-per-song)
            if not finished:
                proc.kill()
            proc.stdout.close()
            returncode = proc.wait()
            stderr_file.seek(0)
            outcome["log"] = stderr_file.read().decode("utf-8", "replace").strip()
            outcome["failed"] = finished and returncode != 0


def soundfile_windows(path, sample_rate, clip_samples, outcome):
    """The same as ffmpeg_windows, decoded by libsndfile and resampled by soxr.

    The fallback for files whose headers ffmpeg rejects (some Ogg Vorbis files libsndfile reads).
    Mono goes to both channels at -3 dB, as with ffmpeg; more than two channels are mixed as
    even-numbered to the left, odd-numbered to the right.
    """
    import soundfile
    import soxr

    try:
        source = soundfile.SoundFile(path)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as e:
        outcome.update(failed=True, log=str(e))
        return
    with source:
        resampler = soxr.ResampleStream(source.samplerate, sample_rate, CHANNELS, dtype="float32")
        window = np.empty((clip_samples, CHANNELS), np.float32)
        filled = 0
        while True:
            try:
                block = source.read(max(1, clip_samples * source.samplerate // sample_rate // 4),
                                    dtype="float32", always_2d=True)
            except (soundfile.LibsndfileError, RuntimeError) as e:
                outcome.update(failed=True, log=str(e))
                block = np.empty((0, source.channels), np.float32)
            last = len(block) == 0
            block = to_stereo(block)  # both channels at -3 dB for mono, as ffmpeg's -ac 2 does it
            resampled = resampler.resample_chunk(np.ascontiguousarray(block), last=last)
            outcome["seconds"] += len(resampled) / sample_rate
            while len(resampled):
                take = min(clip_samples - filled, len(resampled))
                window[filled:filled + take] = resampled[:take]
                filled, resampled = filled + take, resampled[take:]
                if filled == clip_samples:
                    yield window
                    filled = 0
            if last:
                return


def to_stereo(block):
    """(samples, channels) -> (samples, 2) as ffmpeg's -ac 2 does it: mono to both channels at -3 dB; more than two
    channels mixed as even-numbered to the left, odd-numbered to the right."""
    if block.shape[1] == 1:
        return np.repeat(block * np.float32(np.sqrt(0.5)), CHANNELS, axis=1)
    if block.shape[1] > CHANNELS:
        return np.stack([block[:, 0::2].mean(1), block[:, 1::2].mean(1)], axis=1)
    return block


def decode_audio(path, sample_rate):
    """A whole audio file as float32 (2, samples) at sample_rate, decoded as the clips are (ffmpeg, else libsndfile
    and soxr). PrepareError says why a file cannot be decoded."""
    import soundfile
    import soxr

    path = Path(path)
    if not path.is_file():
        raise PrepareError(f"{path} is not a file")
    if path.stat().st_size == 0:
        raise PrepareError(f"{path} is empty")
    proc = subprocess.run(ffmpeg_command(path, sample_rate), capture_output=True)
    audio = np.frombuffer(proc.stdout, np.float32)
    if proc.returncode == 0 and len(audio) >= CHANNELS * sample_rate // 100:
        return audio[:len(audio) // CHANNELS * CHANNELS].reshape(-1, CHANNELS).T.copy()
    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        reason = describe_ffmpeg_error(proc.stderr.decode("utf-8", "replace")) if proc.returncode else "no audio in it"
        raise PrepareError(f"{path} cannot be decoded as audio ({reason})") from None
    return soxr.resample(to_stereo(data), rate, sample_rate).T.astype(np.float32, copy=False)


def convert_song(task):
    """Decode one song into clips in out_dir. Returns a result dict; never raises for bad audio."""
    path, source_rel, out_dir, sample_rate, clip_samples, max_clips = task
    stat = os.stat(path)
    result = {"source": source_rel, "source_size": stat.st_size, "source_mtime": stat.st_mtime,
              "clips": [], "reason": None, "note": None, "seconds_decoded": 0.0, "silent_windows": 0}
    if stat.st_size == 0:
        result["reason"] = "empty file"
        return result

    outcome = {"seconds": 0.0, "failed": False, "log": ""}
    cut_clips(ffmpeg_windows(path, sample_rate, clip_samples, outcome), source_rel, out_dir, max_clips, result)
    no_stream = "matches no streams" in outcome["log"] or "does not contain any stream" in outcome["log"]
    if outcome["failed"] and outcome["seconds"] == 0 and not no_stream:
        fallback = {"seconds": 0.0, "failed": False, "log": ""}
        cut_clips(soundfile_windows(path, sample_rate, clip_samples, fallback), source_rel, out_dir, max_clips, result)
        if fallback["seconds"] > 0:
            outcome = fallback
            result["note"] = "ffmpeg could not read it; decoded with libsndfile instead"

    decoded = result["seconds_decoded"] = outcome["seconds"]
    if result["reason"]:  # NaN output: do not trust the clips already written either
        for clip in result["clips"]:
            Path(out_dir, clip["file"]).unlink(missing_ok=True)
        result["clips"] = []
    elif result["clips"]:
        if outcome["failed"]:
            result["note"] = (f"decoding stopped on an error after {decoded:.1f} s "
                              f"({describe_ffmpeg_error(outcome['log'])}); kept the full windows before it")
        elif outcome["log"]:
            result["note"] = f"decoded {decoded:.1f} s with warnings ({describe_ffmpeg_error(outcome['log'])})"
    elif no_stream:
        result["reason"] = "not audio: the file has no audio stream"
    elif outcome["failed"] and decoded == 0:
        result["reason"] = f"not audio or corrupt: ffmpeg cannot decode it ({describe_ffmpeg_error(outcome['log'])})"
    elif decoded * sample_rate < clip_samples:
        damaged = " (decoding stopped on an error)" if outcome["failed"] else ""
        result["reason"] = f"too short: {decoded:.1f} s < {clip_samples / sample_rate:g} s{damaged}"
    else:
        result["reason"] = "silent: every window is below -80 dBFS"
    return result


def cut_clips(windows, source_rel, out_dir, max_clips, result):
    """Save each non-silent window from `windows` as a float16 (2, samples) clip; record it in result."""
    for window_index, interleaved in enumerate(windows):  # (clip_samples, 2) float32
        peak = float(np.abs(interleaved).max())
        if not np.isfinite(peak):
            result["reason"] = "corrupt: the decoder produced NaN or Inf samples"
            break
        if peak < SILENCE_PEAK:
            result["silent_windows"] += 1
            continue
        name = clip_file_name(source_rel, window_index)
        save_atomically(Path(out_dir, name), interleaved.T.astype(np.float16))
        result["clips"].append({"file": name, "window": window_index, "peak": round(peak, 6)})
        if max_clips and len(result["clips"]) >= max_clips:
            break
    windows.close()  # stops the decoder now, not whenever the generator is collected


# ---------------------------------------------------------------------------------------------
# The manifest


def settings_of(args):
    return {"sample_rate": args.sample_rate, "channels": CHANNELS, "clip_seconds": args.clip_seconds,
            "clip_samples": round(args.clip_seconds * args.sample_rate), "dtype": "float16"}


def load_manifest(path):
    """The manifest at path as a dict, or None when there is none. A broken one is an error."""
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if manifest.get("format_version") != MANIFEST_VERSION:
            raise ValueError(f"format_version {manifest.get('format_version')!r}")
        for key in ("settings", "clips", "skipped"):
            manifest[key]  # noqa: B018  (presence check)
    except (ValueError, KeyError, TypeError) as e:
        raise PrepareError(
            f"{path} is not a manifest this version can read ({e}). Move it away, or use a new --out folder."
        ) from e
    return manifest


def write_manifest(path, settings, sources):
    """Write manifest.json atomically from {source_rel: result}."""
    clips, skipped = [], []
    for source_rel in sorted(sources):
        r = sources[source_rel]
        for clip in r["clips"]:
            clips.append({"file": clip["file"], "source": source_rel, "window": clip["window"],
                          "sample_rate": settings["sample_rate"], "channels": settings["channels"],
                          "samples": settings["clip_samples"], "peak": clip["peak"],
                          "source_size": r["source_size"], "source_mtime": r["source_mtime"]})
            if r.get("note"):  # how the song was decoded, if not plainly
                clips[-1]["note"] = r["note"]
        if r.get("reason"):
            skipped.append({"source": source_rel, "reason": r["reason"], "source_size": r["source_size"],
                            "source_mtime": r["source_mtime"]})
    manifest = {"format_version": MANIFEST_VERSION, "settings": settings, "clips": clips, "skipped": skipped}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def sources_from_manifest(manifest):
    """{source_rel: result} as convert_song would have returned it, rebuilt from a manifest."""
    sources = {}
    for clip in manifest["clips"]:
        r = sources.setdefault(clip["source"], {"source": clip["source"], "clips": [], "reason": None,
                                                "source_size": clip["source_size"],
                                                "source_mtime": clip["source_mtime"]})
        r["clips"].append({"file": clip["file"], "window": clip["window"], "peak": clip["peak"]})
        if clip.get("note"):
            r["note"] = clip["note"]
    for entry in manifest["skipped"]:
        sources[entry["source"]] = {"source": entry["source"], "clips": [], "reason": entry["reason"],
                                    "source_size": entry["source_size"], "source_mtime": entry["source_mtime"]}
    return sources


def is_up_to_date(previous, path, out_dir):
    """True when the song at path is unchanged since `previous` and all its clips are on disk."""
    if previous is None:
        return False
    stat = os.stat(path)
    if stat.st_size != previous["source_size"] or stat.st_mtime != previous["source_mtime"]:
        return False
    return all(Path(out_dir, clip["file"]).exists() for clip in previous["clips"])


# ---------------------------------------------------------------------------------------------
# The run


def remove_unlisted(out_dir, old_files, sources):
    """Delete clips of the old manifest that the new one no longer lists (a changed song, new settings)."""
    for name in old_files - {clip["file"] for r in sources.values() for clip in r["clips"]}:
        Path(out_dir, name).unlink(missing_ok=True)


def summarize(music_dir, found, sources, converted, up_to_date, settings):
    """Print the end-of-run table; return the number of clips in the manifest."""
    results = [sources[rel] for rel in found if rel in sources]
    skipped = [r for r in results if r.get("reason")]
    n_clips = sum(len(r["clips"]) for r in sources.values())
    hours = n_clips * settings["clip_seconds"] / 3600
    reasons = Counter(r["reason"].split(":")[0].split(" (")[0] for r in skipped)
    print()
    print(f"  songs found           {len(found)}")
    print(f"  converted this run    {converted}")
    print(f"  already up to date    {up_to_date}")
    print(f"  skipped               {len(skipped)}" + (f"  ({', '.join(f'{n} {k}' for k, n in reasons.most_common())})"
                                                      if reasons else ""))
    print(f"  clips in manifest     {n_clips}  ({hours:.2f} h of audio, {settings['clip_seconds']:g} s each, "
          f"{settings['sample_rate']} Hz stereo)")
    missing = sorted(set(sources) - set(found))
    if missing:
        print(f"  not found this time   {len(missing)} (their clips are kept in the manifest)")
    notes = [r for r in results if r.get("note")]
    shown = skipped[:30] + notes[:10]
    if shown:
        print("\n  file" + " " * 46 + "what happened")
        for r in shown:
            print(f"  {r['source'][:48]:<49} {r.get('reason') or r['note']}")
        if len(skipped) > 30:
            print(f"  ... and {len(skipped) - 30} more skipped files, all listed in {MANIFEST_NAME}")
    return n_clips


def explain_no_clips(music_dir, found, sources, extensions, settings):
    if not found:
        return (f"no audio files found under {music_dir} (looked for {', '.join('.' + e for e in extensions)} "
                f"in any letter case; use --extensions to add others)")
    reasons = Counter(sources[rel]["reason"].split(":")[0] for rel in found if sources.get(rel, {}).get("reason"))
    if len(reasons) == 1 and "too short" in reasons:
        return (f"all {len(found)} files were shorter than {settings['clip_seconds']:g} s; "
                f"lower --clip-seconds to use them")
    detail = ", ".join(f"{n} {k}" for k, n in reasons.most_common())
    return f"none of the {len(found)} files gave a clip ({detail}); see the table above"


def prepare(args):
    music_dir = Path(args.music_dir).expanduser()
    out_dir = Path(args.out).expanduser()
    if not music_dir.is_dir():
        raise PrepareError(f"music folder {music_dir} does not exist or is not a folder")
    if shutil.which("ffmpeg") is None:
        raise PrepareError("ffmpeg was not found on PATH. Install it (Debian/Ubuntu: sudo apt-get install -y "
                           "ffmpeg; macOS: brew install ffmpeg; conda: conda install -c conda-forge ffmpeg)")
    extensions = parse_extensions(args.extensions)
    settings = settings_of(args)
    if settings["clip_samples"] < 1:
        raise PrepareError(f"--clip-seconds {args.clip_seconds} is too short for --sample-rate {args.sample_rate}")
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST_NAME
    for stale in out_dir.glob(".*.tmp"):  # left by a run that was killed
        stale.unlink()

    manifest = load_manifest(manifest_path)
    previous = sources_from_manifest(manifest) if manifest else {}
    compatible, reuse = True, False
    if manifest is not None:
        old = manifest["settings"]
        compatible = {k: old.get(k) for k in settings} == settings
        if not compatible and not args.overwrite:
            raise PrepareError(
                f"{out_dir} holds clips made with sample_rate={old.get('sample_rate')}, "
                f"clip_seconds={old.get('clip_seconds')}, but this run asks for sample_rate={args.sample_rate}, "
                f"clip_seconds={args.clip_seconds}. Use another --out folder, or add --overwrite to convert "
                f"everything again."
            )
        reuse = compatible and not args.overwrite and old.get("max_clips_per_song") == args.max_clips_per_song
    settings["max_clips_per_song"] = args.max_clips_per_song
    # Songs not found this time keep their clips, unless the settings changed under them.
    sources = dict(previous) if compatible else {}
    old_files = {clip["file"] for r in previous.values() for clip in r["clips"]}
    reusable = previous if reuse else {}

    paths = find_audio_files(music_dir, extensions)
    rel_of = {p: p.relative_to(music_dir).as_posix() for p in paths}
    found = [rel_of[p] for p in paths]
    todo = [p for p in paths if not is_up_to_date(reusable.get(rel_of[p]), p, out_dir)]
    up_to_date = len(paths) - len(todo)
    print(f"{len(paths)} songs under {music_dir}: {len(todo)} to convert, {up_to_date} up to date "
          f"({args.sample_rate} Hz, {args.clip_seconds:g} s clips, {args.workers} workers)")

    clip_samples = settings["clip_samples"]
    tasks = [(str(p), rel_of[p], str(out_dir), args.sample_rate, clip_samples, args.max_clips_per_song)
             for p in todo]
    last_write = time.monotonic()
    pool = multiprocessing.Pool(args.workers) if args.workers > 1 and len(tasks) > 1 else None
    results = pool.imap_unordered(convert_song, tasks) if pool else map(convert_song, tasks)
    converted = 0
    try:
        with tqdm(total=len(tasks), unit="song", dynamic_ncols=True, disable=not tasks) as bar:
            audio_seconds = 0.0
            for result in results:
                sources[result["source"]] = result
                converted += 1
                audio_seconds += result["seconds_decoded"]
                bar.set_postfix(audio=f"{audio_seconds / 3600:.2f}h", clips=sum(len(r["clips"]) for r in sources.values()),
                                refresh=False)
                bar.update()
                if time.monotonic() - last_write > 5:  # a killed run keeps most of its work
                    write_manifest(manifest_path, settings, sources)
                    last_write = time.monotonic()
    except KeyboardInterrupt:
        if pool:
            pool.terminate()
        remove_unlisted(out_dir, old_files, sources)
        write_manifest(manifest_path, settings, sources)
        print(f"\nInterrupted: {converted} songs converted so far are kept in {manifest_path}; "
              f"run the same command again to continue.")
        return 130
    finally:
        if pool:
            pool.close()
            pool.join()

    remove_unlisted(out_dir, old_files, sources)
    write_manifest(manifest_path, settings, sources)
    n_clips = summarize(music_dir, found, sources, converted, up_to_date, settings)
    if n_clips == 0:
        print(f"\nerror: {explain_no_clips(music_dir, found, sources, extensions, settings)}", file=sys.stderr)
        return 1
    print(f"\nWrote {manifest_path}. Next: python create_dataset.py {out_dir} --out dataset")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("music_dir", help="folder with your music; searched recursively")
    parser.add_argument("--out", default="prepared", help="folder for the clips and manifest.json (default: prepared)")
    parser.add_argument("--sample-rate", type=int, default=12000, help="resample every song to this rate in Hz (default: 12000)")
    parser.add_argument("--clip-seconds", type=float, default=120, help="length of each clip in seconds (default: 120)")
    parser.add_argument("--max-clips-per-song", type=int, default=0,
                        help="keep at most this many clips of each song, from its start; 0 keeps every full window (default: 0)")
    parser.add_argument("--extensions", default="mp3",
                        help=f"comma-separated file types to look for, any letter case; from {','.join(KNOWN_EXTENSIONS)} (default: mp3)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="songs decoded at once, each in its own process (default: number of cores)")
    parser.add_argument("--overwrite", action="store_true",
                        help="convert every song again, even into a folder made with other settings")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    for flag, value in (("--sample-rate", args.sample_rate), ("--clip-seconds", args.clip_seconds),
                        ("--workers", args.workers)):
        if value <= 0:
            print(f"error: {flag} must be positive, got {value}", file=sys.stderr)
            return 2
    if args.max_clips_per_song < 0:
        print(f"error: --max-clips-per-song must be 0 (no limit) or more, got {args.max_clips_per_song}", file=sys.stderr)
        return 2
    try:
        return prepare(args)
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
