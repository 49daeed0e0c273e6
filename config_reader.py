"""Read and validate MusiGAN's YAML config.

    from config_reader import load_config_from_yaml
    config = load_config_from_yaml("config.yaml", overrides=["model.num_layers=2", "training.steps=500"])
    config["model"]["num_layers"]   # 2

Every key, its type, its default and what it means are in SCHEMA below (config.yaml shows them with
comments). A key left out takes its default. An unknown key, a value of the wrong type or out of
range raises ValueError naming the key, the value and what is allowed.
"""

import copy
import sys
import difflib
from pathlib import Path

import yaml

from loss_functions import ADVERSARIAL_KINDS, REMOVED_LOSS_WEIGHTS, SEED_LOSS_WEIGHTS

SEAMS = ("long", "joined_windows")  # model.seams: how the latent generator makes music of any length


def _number(value):
    """'1e-4' -> 0.0001; anything else unchanged."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


# The default recipe is the latent GAN's: the adversarial loss alone (hinge, with R1 on real latents). The
# unpaired reconstruction, STFT and KL terms compared a fake with an unrelated real chunk, which silence and
# the average spectrum minimise; they stay for the seed's end-to-end generator (configs/seed.yaml).
DEFAULT_LOSS_WEIGHTS = {**{name: 0.0 for name in SEED_LOSS_WEIGHTS}, "adversarial": 1.0}
LATENT_LOSS_WEIGHTS = ("adversarial", "feature_matching")  # the terms that apply to latents


RENAMED_KEYS = {("training", "batch_size"): "gan_batch_size"}  # (section, old key): new key; read as the new one
# Keys that change a model's shape, added with a default other than the old behaviour: a checkpoint saved before
# them was made without them (section, key): the value that describes it.
ADDED_KEYS = {("discriminator", "motion"): False}


class Field:
    """One config key: its default, its kind ("int", "float", "bool", "str", "floats", "resume") and limits."""

    def __init__(self, default, kind, help, low=None, high=None, choices=None, optional=False):
        self.default, self.kind, self.help = default, kind, help
        self.low, self.high, self.choices, self.optional = low, high, choices, optional

    def check(self, key, value):
        """The value, converted where that is lossless (an int where a float is asked); else ValueError."""
        if value is None and self.optional:
            return None
        kind = self.kind
        if kind in ("float", "floats"):  # PyYAML reads 1e-4 (no dot) as text: take it as the number it is
            value = [_number(v) for v in value] if kind == "floats" and isinstance(value, list) else _number(value)
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
            "floats": isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value),
            "resume": value is False or value == "latest" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0),
        }[kind]
        if not ok:
            raise ValueError(f"{key}: {value!r} is not allowed; expected {self.describe()}")
        numbers = value if kind == "floats" else [value] if kind in ("int", "float") else []
        for number in numbers:
            if (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
                raise ValueError(f"{key}: {value!r} is out of range; expected {self.describe()}")
        if kind == "float":
            value = float(value)
        if self.choices and value not in self.choices:
            raise ValueError(f"{key}: {value!r} is not one of {', '.join(map(str, self.choices))}")
        return value

    def describe(self):
        names = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "text",
                 "floats": "a list of numbers", "resume": "an epoch number, latest, or false"}
        text = names[self.kind]
        if self.choices:
            text = f"one of {', '.join(map(str, self.choices))}"
        if self.low is not None and self.high is not None:
            text += f" from {self.low} to {self.high}"
        elif self.low is not None:
            text += f" of at least {self.low}"
        return text + (" (or null)" if self.optional else "")


SCHEMA = {
    "data": {
        "dataset_dir": Field("dataset", "str", "folder written by create_dataset.py"),
        "sample_rate": Field(12000, "int", "must match the dataset's sample rate", low=1),
        "batch_size": Field(8, "int", "chunks per batch", low=1),
        "num_workers": Field(2, "int", "DataLoader worker processes", low=0),
        "steps_per_epoch": Field(100, "int", "updates per epoch in both stages, whatever the collection's size (an epoch is the unit of validation, checkpoints and samples); 0: one pass over the training set", low=0),
    },
    "model": {  # VariationalAttentionModel(**config["model"]); piano_model.build_generator(config) adds the VAE's shape
        "architecture": Field("latent", "str", "latent: a transformer writes latent sequences that the VAE decodes (needs vae.enabled); seed: the seed's end-to-end waveform generator", choices=("latent", "seed")),
        "sound_channels": Field(2, "int", "audio channels; must match the dataset", low=1),
        "n_channels": Field(128, "int", "seed: convolution width of the encoder and decoder", low=1),
        "seq_len": Field(16500, "int", "samples per training chunk (the VAE's crop; the seed's generated chunk); at most the dataset's chunk length", low=1),
        "latent_seq_len": Field(64, "int", "latent: latent frames per window the discriminator judges; seed: latent frames the transformer attends over", low=1),
        "latent_dim": Field(128, "int", "width of the transformer (seed: also of each latent frame)", low=1),
        "num_heads": Field(4, "int", "attention heads; must divide latent_dim", low=1),
        "num_layers": Field(3, "int", "transformer layers", low=0),
        "context": Field(8, "int", "latent: each layer attends this many frames either side (so music of any length has no seams)", low=1),
        "seams": Field("long", "str", "latent: long: the transformer writes a whole piece at once and D judges windows of it; joined_windows: Musika's, each window written alone from noise between two anchors that neighbours share, D judging two adjacent windows joined", choices=SEAMS),
        "noise_dim": Field(32, "int", "latent: white-noise channels per latent frame; seed: white-noise samples per channel", low=1),
        "style_dim": Field(32, "int", "latent: white-noise channels held fixed over a whole piece (its character)", low=0),
        "finetune_decoder": Field(False, "bool", "latent: train the VAE's decoder too (it needs an audio discriminator); frozen by default"),
        "use_gaussians": Field(True, "bool", "seed: shape the output with a learned loudness envelope"),
        "num_of_gaussians": Field(6, "int", "seed: bumps in that envelope", low=1),
        "dropout": Field(0.0, "float", "dropout in the transformer", low=0.0, high=0.99),
    },
    "vae": {  # stage one: VariationalEncoderDecoder, a VAE of the music (piano_encoder_decoder.py)
        "enabled": Field(True, "bool", "train (or reuse) a VAE of the music and its latent cache before the GAN stage"),
        "checkpoint": Field(None, "str", "a trained vae.pt to reuse instead of training one", optional=True),
        "n_fft": Field(512, "int", "STFT size the VAE reads and writes", low=8),
        "hop_length": Field(128, "int", "STFT hop; latent rate = sample_rate / (hop_length x downsample)", low=1),
        "downsample": Field(4, "int", "STFT frames per latent frame", low=1),
        "latent_dim": Field(64, "int", "size of each latent frame", low=1),
        "width": Field(256, "int", "convolution width of the encoder and decoder", low=1),
        "layers": Field(3, "int", "residual blocks at the latent rate (and one fewer at the STFT frame rate), in the encoder and in the decoder", low=0),
        "steps": Field(5000, "int", "optimizer steps of VAE training, so a collection of any size gets a VAE trained as far (a time budget or a plateau may end it sooner)", low=0),
        "epochs": Field(None, "int", "older configs: size stage one in epochs of data.steps_per_epoch instead of vae.steps; null uses vae.steps", low=0, optional=True),
        "budget_share": Field(0.4, "float", "with training.time_budget_minutes, the share of that budget stage one may take (unless vae.time_budget_minutes is set); stage two gets the rest", low=0.0, high=1.0),
        "patience": Field(6, "int", "once stage one's validation distance has not improved by vae.min_improvement for this many epochs, its learning rate decays over this many more, then it stops (reconstruction only, without vae.adversarial_epochs; with or without a budget); 0 is off", low=0),
        "min_improvement": Field(0.005, "float", "the relative fall in validation distance that counts as improving, for vae.patience", low=0.0, high=1.0),
        "learning_rate": Field(1e-3, "float", "VAE learning rate (Adam)", low=0.0),
        "lr_decay": Field(0.1, "float", "the learning rate falls along a cosine to this fraction of itself by the end of stage one's steps (fine-tuning included) or of its time budget, whichever comes first (after a plateau, over vae.patience more epochs); 1 keeps it constant", low=0.0, high=1.0),
        "grad_clip": Field(1.0, "float", "clip the VAE's gradient norm to this; 0 is off", low=0.0),
        "kl_weight": Field(0.01, "float", "weight of the KL term (per element) once warmed up", low=0.0),
        "kl_warmup_steps": Field(500, "int", "steps over which the KL weight rises from 0 (RAVE's warm-up); 0 is off", low=0),
        "augment_eq_db": Field(3.0, "float", "training augmentation: each chunk through a random smooth equalizer, gains of this spread (dB) at 8 log-spaced frequencies, so the VAE carries a song's spectral balance instead of learning the collection's; 0 is off", low=0.0),
        "adversarial_epochs": Field(0, "int", "then epochs of decoder fine-tuning against a spectrogram discriminator, encoder frozen (RAVE phase 2)", low=0),
        "adversarial_weight": Field(0.1, "float", "weight of the hinge loss in that fine-tuning", low=0.0),
        "feature_matching_weight": Field(1.0, "float", "weight of feature matching in that fine-tuning", low=0.0),
        "time_budget_minutes": Field(0.0, "float", "stop VAE training after the epoch that uses up this many minutes; 0: vae.budget_share of training.time_budget_minutes, or no limit", low=0.0),
    },
    "discriminator": {
        "n_channels": Field(128, "int", "width of the last convolution block (of the latent discriminator, or the seed's waveform one)", low=1),
        "use_minibatch_discrimination": Field(True, "bool", "compare the samples of a batch (against mode collapse)"),
        "mdisc_kernels": Field(16, "int", "minibatch-discrimination projections", low=1),
        "mdisc_kernel_dim": Field(8, "int", "size of each projection", low=1),
        "use_waveform_mdisc": Field(True, "bool", "seed: the seed's waveform discriminator with minibatch discrimination"),
        "multi_scale": Field(False, "bool", "add MelGAN's multi-scale waveform discriminator (latent: on decoded audio)"),
        "multi_resolution_stft": Field(False, "bool", "add a multi-resolution STFT (spectrogram) discriminator (latent: on decoded audio)"),
        "width": Field(16, "int", "base width of the multi-scale and STFT discriminators", low=1),
        "motion": Field(True, "bool", "latent: a second critic of how each window moves (its change over lags of 43 ms to 0.7 s, and its drift between quarters), added to the latent discriminator's logit (measured in docs/experiments.md: held-out FAD 80.2 -> 64.5)"),
    },
    "training": {
        "steps": Field(10000, "int", "updates of adversarial training (a time budget may end it sooner)", low=0),
        "epochs": Field(None, "int", "older configs: size stage two in epochs of data.steps_per_epoch instead of training.steps; null uses training.steps", low=0, optional=True),
        "learning_rate": Field(1e-4, "float", "generator learning rate", low=0.0),
        "learning_rate_disc": Field(1e-4, "float", "discriminator learning rate", low=0.0),
        "betas": Field([0.5, 0.9], "floats", "Adam betas for both optimizers", low=0.0, high=0.9999),
        "accumulation_steps": Field(1, "int", "batches whose gradients add up to one update", low=1),
        "gan_batch_size": Field(32, "int", "latent: windows per GAN batch (data.batch_size is the VAE's and the seed's)", low=2),
        "generator_updates": Field(2, "int", "seed: generator updates per discriminator update", low=1),
        "smoothing": Field(0.1, "float", "one-sided label smoothing of the real label (bce only)", low=0.0, high=0.5),
        "grad_clip": Field(0.0, "float", "clip gradient norms to this; 0 is off", low=0.0),
        "adversarial_loss": Field("hinge", "str", "hinge, bce (the seed's) or lsgan", choices=ADVERSARIAL_KINDS),
        "r1_weight": Field(1.0, "float", "latent: weight of the R1 gradient penalty on real latents; 0 is off", low=0.0),
        "r1_adaptive": Field(True, "bool", "latent: raise the R1 weight (up to 10) while D is overconfident on real latents, lower it (down to r1_weight) when not (Musika)"),
        "ada_target": Field(0.0, "float", "latent: adaptive augmentation of the windows D sees, real and fake alike (time shift, gain, channel offsets, noise; ADA): its probability rises while D calls more than this share of real training windows real, and falls otherwise; 0 is off", low=0.0, high=1.0),
        "ema_decay": Field(0.999, "float", "latent: decay of the generator's EMA copy, which samples, the sweep and generate.py use", low=0.0, high=0.99999),
        "keys": Field(33, "int", "seed: segments a waveform is split into by the segment losses", low=1),
        "compile": Field(False, "bool", "torch.compile the VAE and the generator (latent: its transformer), and the discriminator unless R1 is on (torch.compile cannot do its double backward); the first steps spend minutes compiling, so it is for long GPU runs"),
        "precision": Field("auto", "str", "auto: bf16 on a GPU of compute capability 8 or more, else fp16 with a GradScaler; on the CPU, bf16 where a probe finds it faster, else fp32 (printed at the start)", choices=("auto", "fp32", "bf16", "fp16")),
        "seed": Field(0, "int", "seed of every random number generator", low=0),
        "pretrain_generator_epochs": Field(1, "int", "seed: epochs of reconstruction-only generator training first", low=0),
        "pretrain_discriminator_epochs": Field(1, "int", "epochs of discriminator-only training after that", low=0),
        "max_nonfinite_in_a_row": Field(5, "int", "stop after this many NaN/Inf updates in a row", low=1),
        "time_budget_minutes": Field(0.0, "float", "the whole run's budget: stop after the epoch that uses up this many minutes (both stages; stage one takes vae.budget_share of it); 0 is off", low=0.0),
        "eval_every": Field(10, "int", "log the Fréchet distance to the validation set every this many epochs; 0 is off", low=0),
        "eval_samples": Field(16, "int", "generated clips and validation chunks that distance compares", low=2),
    },
    "loss_weights": {name: Field(weight, "float", "weight of this loss term; 0 skips it", low=0.0)
                     for name, weight in DEFAULT_LOSS_WEIGHTS.items()},
    "output": {
        "checkpoint_folder": Field("checkpoints", "str", "checkpoints, metrics.csv, losses.png and the resolved config"),
        "music_out_folder": Field("samples", "str", "audio samples, one folder per saved epoch"),
        "save_after_nepochs": Field(10, "int", "save checkpoints and samples every this many epochs", low=1),
        "samples_per_save": Field(3, "int", "audio samples written each time", low=0),
        "resume_from_checkpoint": Field(False, "resume", "an epoch number, latest, or false to start afresh"),
        "update_discriminator": Field(False, "bool", "on resume, load a discriminator whose architecture changed"),
        "tensorboard": Field(True, "bool", "TensorBoard event files in checkpoint_folder/tensorboard: scalars per step, epoch means, health, audio and spectrograms (tensorboard --logdir checkpoint_folder)"),
    },
}
LOSS_HELP = {  # one line per loss weight, for config.yaml and the README
    "recon": "Smooth L1 between generated and real chunks",
    "adversarial": "fool the discriminator",
    "kl": "VAE KL term, per element",
    "stft": "multi-resolution STFT distance to the real chunk",
    "feature_matching": "match the discriminator's features of real chunks",
    "d_melody": "D rejects fakes with wrong continuity",
    "d_silence": "D rejects fakes with the wrong share of loud content",
    "d_std": "D rejects fakes with the wrong loudness envelope",
    "d_kl_songs": "D rejects batches with the wrong diversity",
}


def defaults():
    """The full config with every default."""
    return {section: {key: copy.deepcopy(field.default) for key, field in fields.items()}
            for section, fields in SCHEMA.items()}


def seed_config():
    """The full config with the seed's recipe: BCE, the seed's discriminator alone, the seed's loss weights
    (configs/seed.yaml). The model, data and training sizes are the seed's in both this and defaults()."""
    from piano_model import SEED_MODEL_CONFIG

    config = defaults()
    config["model"].update(SEED_MODEL_CONFIG, architecture="seed")
    config["training"].update(adversarial_loss="bce", learning_rate_disc=4e-5)
    config["discriminator"].update(use_waveform_mdisc=True, multi_scale=False, multi_resolution_stft=False)
    config["loss_weights"] = dict(SEED_LOSS_WEIGHTS)
    config["vae"]["enabled"] = False  # the seed's generator pretrains on (unpaired) reconstruction instead
    config["data"]["steps_per_epoch"] = 0  # the seed's epoch: one pass over the training set, 700 of them
    config["training"]["epochs"] = 700
    return config


def sections_with(key):
    """The sections whose schema has `key` (an unknown key's hint, and a bare --set key)."""
    return [section for section, fields in SCHEMA.items() if key in fields]


def suggest(name, candidates):
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def validate(raw, source="config"):
    """A complete, checked config from a (possibly partial) nested dict."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected sections such as 'model:' and 'training:', got {type(raw).__name__}")
    config = defaults()
    for section, values in raw.items():
        if section not in SCHEMA:
            raise ValueError(f"{source}: unknown section {section!r}{suggest(section, SCHEMA)} "
                             f"(sections: {', '.join(SCHEMA)})")
        if not isinstance(values, dict):
            raise ValueError(f"{source}: section {section!r} must hold keys, got {values!r}")
        for key, value in values.items():
            if section == "loss_weights" and key in REMOVED_LOSS_WEIGHTS:
                if value in (0, 0.0, "0", None):
                    continue  # written by an older config.yaml, which listed every term
                raise ValueError(f"{source}: loss_weights.{key} is no longer a loss term (no preset used it, and "
                                 f"it was removed); delete that line")
            key = RENAMED_KEYS.get((section, key), key)  # an earlier name, in an older config or checkpoint
            if key not in SCHEMA[section]:
                homes = sections_with(key)
                hint = (f"; {key!r} belongs in section " + " or ".join(map(repr, homes)) if homes
                        else suggest(key, SCHEMA[section]))
                raise ValueError(f"{source}: unknown key {section}.{key}{hint}")
            config[section][key] = SCHEMA[section][key].check(f"{section}.{key}", value)
    model = config["model"]
    if model["latent_dim"] % model["num_heads"]:
        raise ValueError(f"{source}: model.num_heads ({model['num_heads']}) must divide model.latent_dim "
                         f"({model['latent_dim']})")
    if model["architecture"] == "latent":
        if not config["vae"]["enabled"]:
            raise ValueError(f"{source}: model.architecture: latent generates in the VAE's latent space and needs "
                             f"vae.enabled: true; for the seed's end-to-end generator set model.architecture: seed "
                             f"(as configs/seed.yaml does)")
        for name, weight in config["loss_weights"].items():
            if weight and name not in LATENT_LOSS_WEIGHTS:
                raise ValueError(f"{source}: loss_weights.{name} is {weight:g}, but it compares waveforms and applies "
                                 f"only to model.architecture: seed; the latent GAN uses "
                                 f"{' and '.join('loss_weights.' + n for n in LATENT_LOSS_WEIGHTS)}. Set it to 0; or, for "
                                 f"a config (or a run) made for the seed's generator, set model.architecture: seed.")
        if model["finetune_decoder"] and not (config["discriminator"]["multi_scale"]
                                              or config["discriminator"]["multi_resolution_stft"]):
            raise ValueError(f"{source}: model.finetune_decoder: true needs an audio discriminator to learn from; "
                             f"set discriminator.multi_resolution_stft: true (or multi_scale)")
    elif model["noise_dim"] < model["latent_seq_len"]:
        raise ValueError(f"{source}: model.noise_dim ({model['noise_dim']}) must be at least model.latent_seq_len "
                         f"({model['latent_seq_len']})")
    vae = config["vae"]
    if vae["n_fft"] < vae["hop_length"] or (vae["n_fft"] - vae["hop_length"]) % 2:
        raise ValueError(f"{source}: vae.n_fft ({vae['n_fft']}) must be at least vae.hop_length ({vae['hop_length']}) "
                         f"and differ from it by an even number, for example n_fft 512 with hop_length 128")
    if vae["enabled"] and model["seq_len"] < vae["hop_length"] * vae["downsample"]:
        raise ValueError(f"{source}: model.seq_len ({model['seq_len']}) is shorter than one VAE latent frame "
                         f"(vae.hop_length x vae.downsample = {vae['hop_length'] * vae['downsample']} samples)")
    if len(config["training"]["betas"]) != 2:
        raise ValueError(f"{source}: training.betas must be two numbers, got {config['training']['betas']!r}")
    return config


def config_from_checkpoint(raw, source):
    """The validated config saved inside a checkpoint. One saved before the latent GAN existed has no
    model.architecture: it was made by the seed's generator, and reads as such."""
    raw = copy.deepcopy(raw) if isinstance(raw, dict) else raw
    if isinstance(raw, dict) and "architecture" not in (raw.get("model") or {}):
        raw.setdefault("model", {})["architecture"] = "seed"
    for (section, key), value in ADDED_KEYS.items():  # saved before the key existed: the model had it off
        if isinstance(raw, dict) and isinstance(raw.get(section), dict) and key not in raw[section]:
            raw[section][key] = value
    return validate(raw, source=source)


def resolve_key(path, assignment):
    """(section, key) for the key of the override `assignment`: 'section.key', or a bare 'key' that only one
    section has."""
    where = f"--set {assignment!r}"
    parts = path.strip().split(".")
    if len(parts) == 2 and all(parts):
        return parts[0], parts[1]
    if len(parts) != 1 or not parts[0]:
        raise ValueError(f"{where}: the key must be section.key or a bare key, for example training.steps=500 "
                         f"(sections: {', '.join(SCHEMA)})")
    key = parts[0]
    sections = sections_with(key)
    if len(sections) == 1:
        return sections[0], key
    if sections:
        raise ValueError(f"{where}: {key} is in {len(sections)} sections, so say which: "
                         + "; ".join(f"{section}.{key} ({SCHEMA[section][key].help})" for section in sections))
    close = difflib.get_close_matches(key, {name for fields in SCHEMA.values() for name in fields}, n=1, cutoff=0.5)
    hint = f"; did you mean {' or '.join(f'{s}.{close[0]}' for s in sections_with(close[0]))}?" if close else ""
    raise ValueError(f"{where}: no section has a key {key!r}{hint} (see config.yaml for the keys)")


def apply_override(raw, assignment):
    """Set one 'section.key=value' (value parsed as YAML: 2, 1e-4, true, latest, [0.5, 0.9]) in raw. A bare
    'key=value' works when only one section has that key; it then says which, on stderr."""
    if "=" not in assignment:
        raise ValueError(f"--set {assignment!r}: expected section.key=value, for example model.num_layers=2")
    path, text = assignment.split("=", 1)
    section_name, key = resolve_key(path, assignment)
    if "." not in path:
        print(f"--set {path.strip()}: means {section_name}.{key}", file=sys.stderr)
    value = yaml.safe_load(text) if text.strip() else ""
    section = raw.setdefault(section_name, {})
    if not isinstance(section, dict):
        raise ValueError(f"--set {assignment!r}: {section_name} is not a section")
    section[key] = value
    return raw


def load_config_from_yaml(path, overrides=()):
    """The validated config from a YAML file, with `section.key=value` overrides applied on top."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"config file {path} not found; copy config.yaml from the project and edit it")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {e}") from e
    raw = copy.deepcopy(raw) if raw is not None else {}
    for assignment in overrides:
        apply_override(raw, assignment)
    return validate(raw, source=str(path))


def write_config(config, path):
    """Write a resolved config as YAML that load_config_from_yaml reads back to the same dict."""
    Path(path).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


SECTION_TITLES = {
    "data": "The dataset (made by prepare_dataset.py and create_dataset.py)",
    "model": "The generator: VariationalAttentionModel (model.architecture latent: noise -> transformer -> VAE latents -> VAE decoder)",
    "vae": "Stage one: a VAE of your music (VariationalEncoderDecoder), then its latent cache",
    "discriminator": "The discriminators; with several enabled they are trained together",
    "training": "The GAN loop (latent: hinge + R1 on the latent cache, an EMA generator)",
    "loss_weights": "What each loss term weighs; 0 skips computing it",
    "output": "Checkpoints, metrics and audio samples",
}


def commented_yaml(config, header):
    """A config as YAML with each key's help as a comment (how config.yaml and configs/*.yaml are made)."""
    lines = [f"# {line}" if line else "" for line in header.splitlines()] + [""]
    for section, fields in SCHEMA.items():
        lines += [f"# {SECTION_TITLES[section]}", f"{section}:"]
        for key, field in fields.items():
            value = yaml.safe_dump({key: config[section][key]}, default_flow_style=True).strip()[1:-1]
            note = LOSS_HELP[key] if section == "loss_weights" else field.help
            lines.append(f"  {value:<36}# {note}")
        lines.append("")
    return "\n".join(lines)


PRESETS = {  # file: (config, header); regenerate with: python config_reader.py
    "config.yaml": (defaults, """MusiGAN training config. Every key is optional; a key left out takes the value shown here.
Two stages: a VAE of your music (vae), then a GAN that writes sequences in its latent space (model,
discriminator, training). Keys marked "seed:" apply only to the seed's end-to-end generator, which is
one switch away: --config configs/seed.yaml. Measurements behind the defaults: docs/experiments.md.
Override any key from the command line: python piano_main.py --set training.steps=500"""),
    "configs/seed.yaml": (seed_config, """The seed's recipe, exactly: BCE with label smoothing, the waveform discriminator with minibatch
discrimination, and the loss terms the seed summed (G: recon x2, adversarial x20, KL x5e-5; D: its BCE
plus its silence, melody, std and kl_songs terms).
python piano_main.py --config configs/seed.yaml"""),
}


def judged_frames(model):
    """Latent frames in what the discriminator judges, from config["model"]: a window of latent_seq_len, or two
    adjacent ones joined under seams: joined_windows (Musika's)."""
    return model["latent_seq_len"] * (2 if model.get("seams") == "joined_windows" else 1)


if __name__ == "__main__":
    root = Path(__file__).resolve().parent
    for name, (make, header) in PRESETS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(commented_yaml(make(), header), encoding="utf-8")
        print(f"wrote {name}")

