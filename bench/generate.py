"""Benchmark generation speed on the CPU: how many seconds of music one wall-clock second makes.

    python bench/generate.py                  # both generators, 2 threads, 12 kHz
    python bench/generate.py --batch 1 --seconds 60 --threads 1

The generator runs in eval mode under torch.inference_mode, from white noise to a waveform, as
generate.py uses it: the latent generator (config.yaml's size, untrained: speed does not depend on the
weights) writes --batch pieces of --seconds in one pass through its transformer and the VAE's decoder;
the seed's writes --batch chunks of its seq_len; "decoder" is the VAE's decoder alone on 8 latent sequences of
10 s (issue 9's decode figure). Real-time factor = audio seconds made / wall seconds
(median of --repeats). The last line is JSON. Targets: the latent generator 300x or more on 2 threads;
the seed's gave 19x, and 40x after this project's optimizations.
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

from config_reader import defaults  # noqa: E402
from piano_model import SEED_MODEL_CONFIG, VariationalAttentionModel, build_generator  # noqa: E402


def timed(make, repeats):
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        out = make()
        if i >= 2:
            times.append(time.perf_counter() - start)
    assert torch.isfinite(out).all()
    return statistics.median(times)



def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="pieces (latent) or chunks (seed) generated at once (default: 4)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each latent piece (default: 30)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--sample-rate", type=int, default=12000, help="sample rate of the output (default: 12000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches after 2 warm-up ones (default: 5)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    latent = build_generator(defaults()).eval()
    seed = VariationalAttentionModel(**SEED_MODEL_CONFIG).eval()
    frames = round(args.seconds * args.sample_rate / latent.frame_samples)
    vae_frames = round(10 * args.sample_rate / latent.frame_samples)
    z = torch.randn(8, vae_frames, latent.vae.latent_dim)
    makers = {
        "latent": (lambda: latent(latent.sample_noise(args.batch, frames=frames))[2],
                   args.batch * frames * latent.frame_samples / args.sample_rate),
        "decoder": (lambda: latent.vae.decoder(z), 8 * vae_frames * latent.frame_samples / args.sample_rate),
        "seed": (lambda: seed(seed.sample_noise(args.batch))[2], args.batch * SEED_MODEL_CONFIG["seq_len"] / args.sample_rate),
    }
    results = {}
    for arch, (make, audio_seconds) in makers.items():
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
                seconds = timed(make, args.repeats)
            results[f"{arch}_{name}"] = audio_seconds / seconds
            print(f"{arch:<8}{name}: {seconds * 1000:.0f} ms for {audio_seconds:.1f} s of audio = "
                  f"{results[f'{arch}_{name}']:.0f}x real time")
    print("targets: latent and decoder 300x or more on 2 threads; the seed's implementation gave 19x")
    best = max(("fp32", "bf16"), key=lambda name: results[f"latent_{name}"])
    print(json.dumps({"realtime_factor": round(results[f"latent_{best}"], 1), "precision": best,
                      **{f"realtime_factor_{key}": round(value, 1) for key, value in results.items()}}))


if __name__ == "__main__":
    main()
