"""What must be right on a GPU, checked on the CPU: the precision a run picks, and checkpoints saved on another
device."""

import torch
import pytest

import piano_main
import utilities
from piano_model import build_generator
from utilities import load_checkpoint, load_generator
from vae_utilities import restore_rng_states, rng_states, save_checkpoint
import config_reader
from conftest import TINY_LATENT_MODEL


def test_auto_precision_on_the_cpu_is_measured_and_said(capsys):
    config = config_reader.validate({})
    precision, autocast, scaler_g, scaler_d = piano_main.precision_setup(config, torch.device("cpu"))
    line = capsys.readouterr().out
    assert precision in ("bf16", "fp32") and scaler_g is None and scaler_d is None
    assert line.startswith(f"precision: {precision} (a bfloat16 matmul ran ") and "as fast as float32" in line
    with autocast():
        assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)


def test_a_resumed_run_keeps_the_precision_its_run_chose(capsys):
    config = config_reader.validate({})
    for chosen in ("bf16", "fp32"):
        assert piano_main.precision_setup(config, torch.device("cpu"), resumed_precision=chosen)[0] == chosen
        assert "as the run being resumed chose" in capsys.readouterr().out
    precision = piano_main.precision_setup(config, torch.device("cpu"), resumed_precision="fp16")[0]
    assert precision in ("bf16", "fp32")  # a run from a GPU that chose fp16, resumed on the CPU: decided afresh
    fixed = config_reader.validate({"training": {"precision": "fp32"}})
    assert piano_main.precision_setup(fixed, torch.device("cpu"), resumed_precision="bf16")[0] == "fp32"


@pytest.mark.parametrize("capability, expected", [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_precision_on_a_gpu_follows_the_compute_capability_of_that_gpu(monkeypatch, capability, expected):
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a GPU")
    precision, why = utilities.auto_precision(torch.device("cuda:1"))
    assert precision == expected and f"{capability[0]}.{capability[1]}" in why
    assert asked == [torch.device("cuda:1")]  # the GPU asked for, not the current one


@pytest.fixture
def saved_on_another_device(tmp_path):
    """A generator checkpoint whose storages say cuda:0, as one saved on a GPU does: the tagger below stands in
    for the GPU when saving, so the file is byte-for-byte what torch.save writes there."""
    from torch import serialization

    config = config_reader.validate({"model": dict(TINY_LATENT_MODEL), "vae": {"latent_dim": 8, "width": 16,
                                                                                "layers": 1}})
    generator = build_generator(config)
    entry = (0, lambda storage: "cuda:0" if storage.device.type == "cpu" else None, lambda storage, location: None)
    serialization._package_registry.append(entry)
    serialization._package_registry.sort(key=lambda e: e[0])
    try:
        path = tmp_path / "generator_epoch_1.pt"
        save_checkpoint(path, generator, torch.optim.Adam(generator.parameters()), 1, config,
                        ema_state_dict=generator.state_dict())
    finally:
        serialization._package_registry.remove(entry)
    return path, generator


def test_a_checkpoint_saved_on_a_gpu_loads_on_the_cpu(saved_on_another_device):
    path, generator = saved_on_another_device
    if not torch.cuda.is_available():  # the file really claims CUDA: loading it as saved fails here
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    state = load_checkpoint(path)
    assert all(t.device.type == "cpu" for t in state["model_state_dict"].values())
    before = rng_states()
    restore_rng_states(state["rng_states"])  # the saved RNG states are CPU tensors again, as set_rng_state needs
    restore_rng_states(before)
    loaded, _, epoch = load_generator(path.parent, "latest", "cpu")
    assert epoch == 1
    for name, tensor in generator.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert set(rng_states()) <= set(state["rng_states"]) | {"cuda"}
