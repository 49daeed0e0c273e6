"""Benchmark generation speed on the CPU: how many seconds of music one wall-clock second makes.

    python bench/generate.py                  # seed config, batch 8, 2 threads, 12 kHz
    python bench/generate.py --batch 1 --threads 1

The generator runs in eval mode under torch.inference_mode, from white noise to a waveform, as
generate.py uses it. Real-time factor = audio seconds made / wall seconds (median of --repeats).
The last line is JSON with the key realtime_factor. Target: 40x or more (the seed's gave 19x).
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from piano_model import SEED_MODEL_CONFIG, VariationalAttentionModel  # noqa: E402



def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="clips generated at once (default: 8)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--sample-rate", type=int, default=12000, help="sample rate of the output (default: 12000)")
    parser.add_argument("--repeats", type=int, default=10, help="timed batches after 2 warm-up ones (default: 10)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    generator = VariationalAttentionModel(**SEED_MODEL_CONFIG).eval()
    audio_seconds = args.batch * SEED_MODEL_CONFIG["seq_len"] / args.sample_rate
    results = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        times = []
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            for i in range(args.repeats + 2):
                noise = torch.randn(args.batch, SEED_MODEL_CONFIG["sound_channels"], SEED_MODEL_CONFIG["noise_dim"])
                start = time.perf_counter()
                waveform = generator(noise)[2]
                if i >= 2:
                    times.append(time.perf_counter() - start)
        assert waveform.shape == (args.batch, 2, SEED_MODEL_CONFIG["seq_len"]) and torch.isfinite(waveform).all()
        results[name] = audio_seconds / statistics.median(times)
        print(f"{name}: {statistics.median(times) * 1000:.0f} ms per batch of {args.batch} "
              f"({audio_seconds:.2f} s of audio) = {results[name]:.0f}x real time")
    best = max(results, key=results.get)
    print(f"seed implementation: 19x; target: 40x or more. Fastest here: {best}")
    print(json.dumps({"realtime_factor": round(results[best], 1), "precision": best,
                      "realtime_factor_fp32": round(results["fp32"], 1), "realtime_factor_bf16": round(results["bf16"], 1)}))


if __name__ == "__main__":
    main()
