"""Benchmark prepare_dataset.py end to end against the decoding floor (plain ffmpeg).

    python bench/prepare.py                       # 12 synthesized songs of 3-5 min plus one of 10 min
    python bench/prepare.py --songs 24 --repeats 3
    python bench/prepare.py --music ~/Music       # your own collection instead (read only)

The synthesized collection (44.1 kHz stereo mp3, like ripped music) is made once in --work and
reused. Each configuration runs in a fresh output folder; the best of --repeats runs is kept.
Printed: files/s, audio seconds decoded per second, the speed-up of 2 workers over 1, the ratio to
`ffmpeg -i song.mp3 -f f32le -ar 12000 -` run over the same files two at a time, and peak RSS of the
largest single process (main, worker or ffmpeg). The last line is JSON.

Targets: speedup_2_workers >= 1.6, ratio_vs_ffmpeg >= 0.6, peak RSS per worker < 400 MiB for a 10-minute song.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from conftest import synth_song, write_audio  # noqa: E402  (the tests' synthesizer)
from prepare_dataset import find_audio_files  # noqa: E402

SOURCE_RATE = 44100


def make_collection(folder, n_songs):
    """n_songs songs of 180-300 s plus one of 600 s, as mp3; reused when already there."""
    folder.mkdir(parents=True, exist_ok=True)
    lengths = [180 + (i * 37) % 121 for i in range(n_songs)] + [600]
    jobs = []
    for i, seconds in enumerate(lengths):
        path = folder / (f"song_{i:02d}.mp3" if seconds != 600 else "long_10min.mp3")
        if not path.exists():
            jobs.append((path, seconds, i))
    if jobs:
        print(f"synthesizing {len(jobs)} songs into {folder} (once) ...", flush=True)
        with ThreadPoolExecutor(2) as pool:  # the encoder runs in ffmpeg, off the GIL
            list(pool.map(lambda job: write_audio(job[0], synth_song(job[1], SOURCE_RATE, 2, job[2]), SOURCE_RATE), jobs))
    return sorted(folder.glob("*.mp3"))


def durations(files):
    def probe(path):
        out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                              str(path)], capture_output=True, text=True).stdout
        return float(out.strip() or 0)
    with ThreadPoolExecutor(4) as pool:
        return sum(pool.map(probe, files))


def timed(command):
    """Run command in a wrapper process; return (seconds, peak RSS in MiB of its largest process)."""
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
               "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode; "
               "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)")
    out = subprocess.run([sys.executable, "-c", wrapper, *map(str, command)], capture_output=True, text=True, check=True)
    seconds, maxrss_kib, code = out.stdout.split()
    if code != "0":
        raise SystemExit(f"{' '.join(map(str, command))} exited with {code}")
    return float(seconds), int(maxrss_kib) / 1024


def run_prepare(music, workers, sample_rate, repeats, scratch):
    best = (float("inf"), 0.0)
    for _ in range(repeats):
        out = Path(tempfile.mkdtemp(dir=scratch))
        result = timed([sys.executable, ROOT / "prepare_dataset.py", music, "--out", out,
                        "--workers", workers, "--sample-rate", sample_rate])
        shutil.rmtree(out)
        best = min(best, result)
    return best


def run_ffmpeg(files, sample_rate, repeats):
    def decode(path):
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "f32le", "-ar", str(sample_rate),
                        "-"], stdout=subprocess.DEVNULL, check=True)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(decode, files))
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--music", help="benchmark on this folder of mp3s instead of a synthesized one")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "musigan-bench-prepare"),
                        help="folder for the synthesized collection and scratch output (default: a temp folder)")
    parser.add_argument("--songs", type=int, default=12, help="synthesized songs of 3-5 min, besides the 10-min one (default: 12)")
    parser.add_argument("--sample-rate", type=int, default=12000, help="target rate (default: 12000)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration; the best counts (default: 2)")
    args = parser.parse_args()

    work = Path(args.work)
    scratch = work / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    if args.music:
        music = Path(args.music).expanduser()
        files = find_audio_files(music, ("mp3",))
    else:
        music = work / "collection"
        files = make_collection(music, args.songs)
    audio_seconds = durations(files)
    print(f"{len(files)} files, {audio_seconds / 60:.1f} min of audio, in {music}")

    t1, rss1 = run_prepare(music, 1, args.sample_rate, args.repeats, scratch)
    t2, rss2 = run_prepare(music, 2, args.sample_rate, args.repeats, scratch)
    t_ffmpeg = run_ffmpeg(files, args.sample_rate, args.repeats)
    long_song = [f for f in files if f.name == "long_10min.mp3"]
    rss_long = None
    if long_song:
        single = scratch / "long_only"
        single.mkdir(exist_ok=True)
        shutil.copy(long_song[0], single / long_song[0].name)
        rss_long = run_prepare(single, 1, args.sample_rate, 1, scratch)[1]

    rows = [("prepare_dataset --workers 1", t1, rss1), ("prepare_dataset --workers 2", t2, rss2),
            ("ffmpeg, 2 at a time (floor)", t_ffmpeg, None)]
    print(f"\n{'configuration':<32}{'seconds':>9}{'files/s':>9}{'x real time':>13}{'peak RSS MiB':>14}")
    for name, seconds, rss in rows:
        print(f"{name:<32}{seconds:>9.2f}{len(files) / seconds:>9.2f}{audio_seconds / seconds:>13.0f}"
              f"{(f'{rss:.0f}' if rss else '-'):>14}")
    result = {
        "files": len(files),
        "audio_seconds": round(audio_seconds, 1),
        "files_per_s": round(len(files) / t2, 3),
        "audio_seconds_per_s": round(audio_seconds / t2, 1),
        "speedup_2_workers": round(t1 / t2, 3),
        "ratio_vs_ffmpeg": round(t_ffmpeg / t2, 3),
        "peak_rss_mib": round(max(rss1, rss2), 1),
        "peak_rss_10min_song_mib": round(rss_long, 1) if rss_long else None,
    }
    print(f"\nspeed-up of 2 workers over 1: {result['speedup_2_workers']:.2f}x (target >= 1.6)")
    print(f"speed relative to plain ffmpeg: {result['ratio_vs_ffmpeg']:.2f} (target >= 0.6)")
    if rss_long:
        print(f"peak RSS of one process on the 10-minute song: {rss_long:.0f} MiB (target < 400)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
