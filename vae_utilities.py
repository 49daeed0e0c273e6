"""Saving MusiGAN checkpoints: one dict of plain types per model, written atomically.

    from vae_utilities import save_checkpoint
    save_checkpoint("checkpoints/generator_epoch_10.pt", generator, optim_g, epoch=10, config=config)

Load them with utilities.load_checkpoint (weights_only=True, so a stranger's file cannot run code).
"""

import os
import random
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_VERSION = 1


def rng_states():
    """Every random number generator's state, as types torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                        "has_gauss": has_gauss, "cached_gaussian": cached}}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states):
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path, model, optimizer, epoch, config, scaler=None, metrics=None, partial=False):
    """Write model, optimizer, scaler, epoch, config, RNG states and metrics to path, atomically.

    The state goes to a temporary file in the same folder, which then replaces path: a run killed at
    any moment leaves either the old file or the new one, never half of one. The module saved is the
    uncompiled one (torch.compile's wrapper is unwrapped).
    """
    path = Path(path)
    model = getattr(model, "_orig_mod", model)
    state = {
        "format_version": CHECKPOINT_VERSION,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "scaler_state_dict": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "epoch": int(epoch),
        "partial": bool(partial),
        "config": config,
        "rng_states": rng_states(),
        "metrics": list(metrics or []),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
