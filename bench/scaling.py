"""Data-parallel scaling of training: one process against torchrun's N processes, on the same machine.

    python piano_main.py --demo          # once: the demo's dataset and config, which this benchmark trains on
    python bench/scaling.py              # 1 process (all cores) against 2 gloo processes (one core each) on the CPU
    python bench/scaling.py --device cuda --processes 1 2 4      # on a machine with 4 GPUs

Each run trains the demo's preset for a few epochs, the batch per process unchanged (so N processes train N
times the global batch), without samples, evaluation or TensorBoard. It prints the global throughput of both
stages (the VAE in audio-seconds per second, the GAN in latent windows per second, both over the epochs after
the first) and their ratio to one process. On a 2-core CPU, two processes share the cores one process used
already: expect no gain there; it shows the cost of the all-reduce, not a target.
"""

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def train(processes, config, folder, device, epochs, threads):
    overrides = [f"output.checkpoint_folder={folder / 'ck'}", f"output.music_out_folder={folder / 'samples'}",
                 f"vae.epochs={epochs}", f"training.epochs={epochs}", "training.eval_every=0",
                 "output.samples_per_save=0", "output.tensorboard=false", f"output.save_after_nepochs={epochs}",
                 "training.precision=fp32", "training.time_budget_minutes=0", "vae.time_budget_minutes=0"]
    argv = [str(ROOT / "piano_main.py"), "--config", str(config), "--device", device]
    argv += [part for item in overrides for part in ("--set", item)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if processes == 1:
        command = [sys.executable, *argv]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_port", str(29500 + processes), *argv]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"training with {processes} process(es) failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    with open(config, encoding="utf-8") as f:
        preset = yaml.safe_load(f)
    with open(ROOT / preset["data"]["dataset_dir"] / "dataset.json", encoding="utf-8") as f:  # as training read it
        pairs = json.load(f)["pairs"]["training"]
    # per process: the VAE's audio-s/s, and the GAN's iterations (GANRun.iterations) of gan_batch_size windows
    vae = [float(r["audio_seconds_per_second"]) * processes for r in read_rows(folder / "ck" / "vae_metrics.csv")[1:]]
    batch = preset["training"]["gan_batch_size"]
    # GANRun.iterations: data.steps_per_epoch updates, or without it the training set's size in global batches
    iterations = preset["data"]["steps_per_epoch"] or max(1, 2 * pairs // (processes * batch))
    windows = [iterations * batch * processes / float(r["seconds"]) for r in read_rows(folder / "ck" / "metrics.csv")[1:]]
    return statistics.median(vae), statistics.median(windows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "runs" / "demo" / "demo_config.yaml"),
                        help="the preset to train (default: the demo's, written by python piano_main.py --demo)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts (default: 1 2)")
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per process)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of each stage (default: 5)")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch of each stage is left out as warm-up")
    if not Path(args.config).exists():
        print(f"error: {args.config} not found; run python piano_main.py --demo first, or pass --config",
              file=sys.stderr)
        return 2
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="musigan_scaling_"))
    try:
        print(f"{'processes':>9}  {'VAE audio-s/s':>14}  {'GAN windows/s':>14}  ratio to 1 process (VAE, GAN)")
        base = None
        for processes in args.processes:
            threads = max(1, cores // processes) if args.device == "cpu" else 1
            vae, gan = train(processes, args.config, work / str(processes), args.device, args.epochs, threads)
            base = base or (vae, gan)
            print(f"{processes:>9}  {vae:>14.1f}  {gan:>14.1f}  {vae / base[0]:.2f}, {gan / base[1]:.2f}"
                  f"   ({threads} thread{'s' if threads > 1 else ''} each)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
