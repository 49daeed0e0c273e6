"""Benchmark one adversarial iteration of MusiGAN on the CPU: the latent GAN at config.yaml's size, and the seed's.

    python bench/train_step.py                         # both, 2 threads, fp32 and bf16
    python bench/train_step.py --arch latent --iters 20
    python bench/train_step.py --arch seed --iters 10 --malloc-threshold-mib 0
    python bench/train_step.py --arch seed --quality 60   # also train 60 iterations in each precision and compare

latent: one latent_train_step at config.yaml's size (training.gan_batch_size windows of model.latent_seq_len
frames): the generator's fakes, D's hinge update with R1 on the real windows, G's update, and the EMA.
seed: what the seed counted as an iteration, 2 generator updates and 1 discriminator update at the seed
config (--batch chunks of --seq-len samples), with the seed's loss terms (recon x2, adversarial BCE x20,
KL x5e-5 for G; BCE plus the silence, melody, std and kl_songs terms for D). Each precision runs in its own process, so each peak RSS is its own. Printed:
seconds per iteration (median after 2 warm-up iterations), samples/s, peak RSS, FLOPs per iteration
(torch.utils.flop_counter), achieved GFLOP/s, and the matmul peak measured in the same run. The last
line is JSON.

Targets on a 2-core machine: bf16 <= 2.4 s, fp32 <= 4.0 s, peak RSS <= 900 MiB.
The seed's implementation took 7.0-7.4 s and 2.6 GB.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))



def matmul_peak_gflops(dtype, size=2048, repeats=5):
    import torch

    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def music_batch(batch, seq_len, seed):
    """Standardized chunks of synthesized piano music, as AudioDataset would give them."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import synth_song

    chunks = [torch.from_numpy(synth_song(seq_len / 12000 + 0.01, 12000, 2, seed + i)[:seq_len].T.copy())
              for i in range(batch)]
    x = torch.stack(chunks)
    return (x - x.mean(dim=(1, 2), keepdim=True)) / x.std(dim=(1, 2), keepdim=True)


def child(args):
    """Measure one precision in this process; print its figures as JSON."""
    import torch

    from discriminator import Discriminator_with_mdisc
    from loss_functions import SEED_LOSS_WEIGHTS
    from piano_model import SEED_MODEL_CONFIG, VariationalAttentionModel
    from piano_train import train_step
    from utilities import configure_cpu_memory, limit_heap_fragmentation

    if args.malloc_threshold_mib is None:
        configure_cpu_memory(args.child)  # what training does
    elif args.malloc_threshold_mib:
        limit_heap_fragmentation(args.malloc_threshold_mib)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    autocast = partial(torch.autocast, "cpu", dtype=torch.bfloat16) if args.child == "bf16" else None
    if args.arch == "latent":
        step, target, samples = latent_step(autocast)
        # torch's FLOP counter cannot follow R1's autograd.grad: its FLOPs are counted without R1 (the timing has it)
        return measure(step, target, args, {"mode": args.child, "arch": "latent", "samples": samples},
                       flop_step=lambda real: step(real, r1_weight=0.0))
    model = {**SEED_MODEL_CONFIG, "seq_len": args.seq_len}
    generator = VariationalAttentionModel(**model)
    disc = Discriminator_with_mdisc(2, model["n_channels"], model["seq_len"])
    optim_g = torch.optim.Adam(generator.parameters(), 1e-4, betas=(0.5, 0.9))
    optim_d = torch.optim.Adam(disc.parameters(), 1e-4, betas=(0.5, 0.9))
    step = partial(train_step, generator, disc, optim_g, optim_d, weights=SEED_LOSS_WEIGHTS, smoothing=0.1,
                   autocast=autocast)

    result = {"mode": args.child, "arch": "seed", "samples": args.batch}
    if args.quality:  # the same data and initialization in both precisions
        history = [step(music_batch(args.batch, model["seq_len"], seed=i % 8 * args.batch)) for i in range(args.quality)]
        result["history"] = history
        print(json.dumps(result))
        return

    return measure(step, music_batch(args.batch, model["seq_len"], seed=0), args, result)


def latent_step(autocast):
    """One latent GAN iteration at config.yaml's size, as GANRun takes it: (step, real windows, batch size)."""
    import copy

    import torch

    from config_reader import defaults, judged_frames
    from discriminator import build_discriminator
    from piano_model import build_generator
    from piano_train import ema_update, latent_train_step

    config = defaults()
    generator, disc = build_generator(config), build_discriminator(config)
    ema = copy.deepcopy(generator)
    optim_g = torch.optim.Adam([p for p in generator.parameters() if p.requires_grad], 1e-4, betas=(0.5, 0.9))
    optim_d = torch.optim.Adam(disc.parameters(), 1e-4, betas=(0.5, 0.9))
    t = config["training"]

    def step(real, r1_weight=t["r1_weight"]):
        logs = latent_train_step(generator, disc, optim_g, optim_d, real, kind=t["adversarial_loss"],
                                 r1_weight=r1_weight, autocast=autocast)
        ema_update(ema, generator, t["ema_decay"])
        return logs

    real = torch.randn(t["gan_batch_size"], judged_frames(config["model"]), config["vae"]["latent_dim"])
    return step, real, t["gan_batch_size"]


def measure(step, target, args, result, flop_step=None):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    for _ in range(2):
        step(target)
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        step(target)
        times.append(time.perf_counter() - start)
    with FlopCounterMode(display=False) as counter:
        (flop_step or step)(target)
    result.update(seconds=statistics.median(times), all_seconds=[round(t, 3) for t in times],
                  flops=counter.get_total_flops(), peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  matmul_gflops=matmul_peak_gflops(torch.bfloat16 if args.child == "bf16" else torch.float32))
    print(json.dumps(result))


def run_child(mode, args, quality=0, arch="seed"):
    command = [sys.executable, __file__, "--child", mode, "--arch", arch, "--batch", str(args.batch), "--threads", str(args.threads),
               "--iters", str(args.iters), "--seq-len", str(args.seq_len), "--quality", str(quality)]
    if args.malloc_threshold_mib is not None:
        command += ["--malloc-threshold-mib", str(args.malloc_threshold_mib)]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the {mode} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare_quality(args):
    runs = {mode: run_child(mode, args, quality=args.quality)["history"] for mode in ("fp32", "bf16")}
    half = args.quality // 2
    print(f"\nquality: {args.quality} iterations from the same initialization and data; means over the last {half}")
    print(f"{'term':<18}{'fp32':>10}{'bf16':>10}{'difference':>12}")
    summary = {}
    for key in ("g/recon", "g/adversarial", "g/kl", "d/adversarial", "d/real_logit", "d/fake_logit"):
        a = statistics.mean(h[key] for h in runs["fp32"][-half:])
        b = statistics.mean(h[key] for h in runs["bf16"][-half:])
        summary[key] = {"fp32": round(a, 4), "bf16": round(b, 4)}
        print(f"{key:<18}{a:>10.4f}{b:>10.4f}{(b - a) / max(abs(a), 1e-9):>+11.1%}")
    first_nonfinite = {mode: next((i for i, h in enumerate(hist) if not all(map(_finite, h.values()))), None)
                       for mode, hist in runs.items()}
    print(f"first non-finite iteration: {first_nonfinite}")
    return summary


def _finite(value):
    return value == value and abs(value) != float("inf")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="batch size (default: 8)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--iters", type=int, default=6, help="timed iterations after 2 warm-up ones (default: 6)")
    parser.add_argument("--seq-len", type=int, default=16500, help="generated samples per chunk (default: the seed's 16500)")
    parser.add_argument("--malloc-threshold-mib", type=float, default=None,
                        help="glibc mmap threshold for both runs (utilities.limit_heap_fragmentation); 0 keeps glibc's "
                             "default. Default: as training sets it (utilities.configure_cpu_memory: 4 MiB for fp32, "
                             "glibc's default for bf16)")
    parser.add_argument("--quality", type=int, default=0,
                        help="also train this many iterations in fp32 and in bf16 and compare the losses (default: 0, off)")
    parser.add_argument("--arch", choices=["latent", "seed", "both"], default="both",
                        help="which generator's iteration to time (default: both)")
    parser.add_argument("--child", choices=["fp32", "bf16"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    threshold = {None: "as training sets it", 0: "glibc's default"}.get(args.malloc_threshold_mib,
                                                                        f"{args.malloc_threshold_mib} MiB")
    summary = {}
    for arch in (["latent", "seed"] if args.arch == "both" else [args.arch]):
        results = {mode: run_child(mode, args, arch=arch) for mode in ("fp32", "bf16")}
        size = ("config.yaml's latent GAN, batch of 32 windows" if arch == "latent"
                else f"seed config, batch {args.batch}")
        print(f"{size}, {args.threads} threads, malloc threshold: {threshold}")
        print(f"{'precision':<11}{'s/iter':>8}{'samples/s':>11}{'GFLOP/iter':>12}{'GFLOP/s':>9}{'of peak':>9}"
              f"{'matmul peak':>13}{'peak RSS MiB':>14}   iterations (s)")
        for mode, r in results.items():
            achieved = r["flops"] / 1e9 / r["seconds"]
            print(f"{mode:<11}{r['seconds']:>8.3f}{r['samples'] / r['seconds']:>11.1f}{r['flops'] / 1e9:>12.2f}"
                  f"{achieved:>9.1f}{achieved / r['matmul_gflops']:>9.0%}{r['matmul_gflops']:>13.0f}"
                  f"{r['peak_rss_mib']:>14.0f}   {r['all_seconds']}")
        if arch == "seed":
            print("seed implementation: 7.0-7.4 s/iter, 2.6 GB; targets: bf16 <= 2.4 s, fp32 <= 4.0 s, RSS <= 900 MiB")
        summary[arch] = {
            "seconds_per_iter_fp32": round(results["fp32"]["seconds"], 4),
            "seconds_per_iter_bf16": round(results["bf16"]["seconds"], 4),
            "peak_rss_mib": round(max(r["peak_rss_mib"] for r in results.values()), 1),
            "gflop_per_iter": round(results["fp32"]["flops"] / 1e9, 2),
            "fraction_of_matmul_peak_fp32": round(results["fp32"]["flops"] / 1e9 / results["fp32"]["seconds"]
                                                  / results["fp32"]["matmul_gflops"], 3),
            "matmul_peak_gflops": round(results["fp32"]["matmul_gflops"], 1),
            "matmul_peak_gflops_bf16": round(results["bf16"]["matmul_gflops"], 1),
        }
    if args.quality:
        summary["quality"] = compare_quality(args)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
