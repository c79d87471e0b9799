"""Every training setting, once: its type, default, valid range, help text and CLI group.

`TrainConfig` and `AugmentConfig` are the single place a setting is declared. The command line's
training flags are generated from these fields (`cli/options.py`), recipes are TOML files that write
every field out (`recipes/`), and a run's `meta.json` stores the resolved config, so a run can be
repeated exactly with `train --config RUN/meta.json`. Values are checked when a config is built:
a bad one is a ValueError naming the field and its valid range.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fashionclf.core.settings import check_fields, setting

RECOMMENDED_MODEL = "advanced_cnn"  # the seed study's production pick ("Model 4"): one flag away, `--model advanced_cnn`
# What `train` trains when given no --model, --preset or --config (the default follows the evidence): on
# Fashion-MNIST the `photos` preset, the scan recipe measured best on held-out phone photos and among the best on the
# corruption suite (docs/results/shop-photos.md, photos-corruptions.md); on a shop's image folders the pretrained
# photo model (docs/results/clothing-photos.md).
DEFAULT_RECIPE = "photos"
DEFAULT_FOLDER_MODEL = "efficientnet_lite0"


@dataclass
class AugmentConfig:
    """Augmentation settings; a new augmentation is a field here, its function and a line in data/augment.py."""

    rotation: float = setting(10.0, "max rotation in degrees either way (0-30 suits upright product shots)", "augmentation", lo=0, hi=180)
    zoom: float = setting(0.1, "scale drawn in [1-zoom, 1+zoom]", "augmentation", lo=0, hi=0.9)
    shift: float = setting(0.1, "max translation as a fraction of the side", "augmentation", lo=0, hi=0.5)
    hflip: bool = setting(True, "mirror half the images (garments are left-right symmetric enough)", "augmentation")
    erase: float = setting(0.0, "probability of random erasing (a rectangle set to 0)", "augmentation", lo=0, hi=1)
    photo: float = setting(0.0, "probability of photo-style blur/noise/contrast/haze per image", "augmentation", lo=0, hi=1)
    cutmix: float = setting(0.0, "probability that a batch is CutMixed (labels mixed by area)", "augmentation", lo=0, hi=1)
    vflip: float = setting(0.0, "probability of an upside-down flip per image", "augmentation", lo=0, hi=1)
    levels: float = setting(
        0.0, "probability of new black and white points (gray ground, low contrast), half reversed", "augmentation", lo=0, hi=1
    )

    def __post_init__(self):
        check_fields(self, "aug.")


@dataclass
class TrainConfig:
    model: str = setting(RECOMMENDED_MODEL, "registered model name (fashionclf models)", "optimizer", flag=False)
    epochs: int = setting(10, "maximum epochs; early stopping may end sooner", "schedule", lo=1, hi=10_000)
    batch_size: int = setting(128, "images per step (64-512; on 2 cores 128 ran an epoch fastest)", "optimizer", lo=2, hi=65_536)
    optimizer: str = setting("adam", "adam | adamw | sgd (Nesterov, momentum 0.9)", "optimizer", choices=("adam", "adamw", "sgd"))
    lr: float = setting(1e-3, "peak learning rate (Adam's default 1e-3; SGD wants ~0.1)", "optimizer", lo=0, hi=100)
    weight_decay: float = setting(0.0, "L2 (adam, sgd) or decoupled (adamw) weight decay", "optimizer", lo=0, hi=10)
    label_smoothing: float = setting(0.0, "label smoothing, 0-0.2", "regularization", lo=0, hi=0.5)
    augment: bool = setting(False, "random affine augmentation (+ the aug-* options) on each batch", "augmentation")
    aug: AugmentConfig = setting(None, "augmentation settings", "augmentation", factory=AugmentConfig, flag=False)
    schedule: str = setting(
        "plateau",
        "plateau (ReduceLROnPlateau on val loss) | onecycle | cosine (per step, to zero)",
        "schedule",
        choices=("plateau", "onecycle", "cosine"),
    )
    warmup: float = setting(0.2, "onecycle: fraction of steps spent warming up", "schedule", lo=0, hi=1)
    ema_decay: float = setting(
        0.0,
        "exponential moving average of the weights per 128 images, e.g. 0.999; validated and saved instead of the raw weights (0 = off)",
        "regularization",
        lo=0,
        hi=1,
    )
    tta: bool = setting(False, "test-time augmentation: average each image with its mirror image", "regularization")
    freeze_epochs: int = setting(0, "epochs that train only the new head before the body joins", "pretrained", lo=0, hi=10_000)
    body_lr_mult: float = setting(1.0, "the body's learning rate as a fraction of the head's", "pretrained", lo=0, hi=100)
    early_stopping: int = setting(3, "patience in epochs on val loss (0 = off); the best weights are restored", "schedule", lo=0, hi=10_000)
    plateau_patience: int = setting(1, "plateau: epochs without improvement before the LR is cut (0 = off)", "schedule", lo=0, hi=10_000)
    plateau_factor: float = setting(0.5, "plateau: factor the LR is multiplied by", "schedule", lo=0, hi=1)
    seed: int = setting(0, "seed of initialisation, order and augmentation", "data", lo=0, hi=2**31 - 1, flag=False)
    val_size: int = setting(6000, "Fashion-MNIST: images held out of the 60k train split for model choice", "data", lo=0, hi=59_990)
    split_seed: int = setting(0, "seed of the validation split (independent of --seed)", "data", lo=0, hi=2**31 - 1)
    precision: str = setting(
        "auto", "auto | bf16 | fp32 (auto: the variant timed fastest here, cached; bf16 only where the CPU has it natively)",
        "hardware", choices=("auto", "bf16", "fp32"),
    )  # fmt: skip
    channels_last: bool = setting(True, "channels_last memory format (under auto a preference: the other one if timed faster)", "hardware")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N", "hardware")
    threads: int = setting(0, "CPU threads (0: all usable, or half where precision auto timed it faster)", "hardware", lo=0, hi=1024)
    compile: bool = setting(False, "torch.compile the training step (GPUs; on CPUs it measured slower)", "hardware")
    resolution: int = setting(28, "pixels per side the model sees (1-28; below 28 images are down- then upsampled)", "data", lo=1, hi=28)
    model_kwargs: dict = setting(None, "arguments of the model's constructor", "optimizer", factory=dict, flag=False)
    extra_photos: str = setting(
        "", "labelled photos (one subfolder per class) converted as predict converts them and mixed into training", "photos"
    )
    extra_class_map: dict = setting(None, "folder -> class name (None leaves a folder out)", "photos", factory=dict, flag=False)
    extra_repeat: int = setting(3, "with --extra-photos: times each photo appears per epoch", "photos", lo=1, hi=10)

    def __post_init__(self):
        if isinstance(self.aug, dict):
            self.aug = AugmentConfig(**self.aug)
        check_fields(self)


def config_to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict, strict: bool = False) -> TrainConfig:
    """A config from a dict (a recipe, or meta.json's "config"); unknown keys are an error when strict,
    else ignored (a run saved by a newer version), and missing ones take their defaults (an older one)."""
    if not isinstance(d, dict):
        raise ValueError(f"a config must be a table of settings, not {type(d).__name__}")
    d = dict(d)
    aug = d.pop("aug", None) or {}
    if not isinstance(aug, dict):
        raise ValueError(f"aug = {aug!r}: expected a table of augmentation settings")
    valid = {f.name for f in dataclasses.fields(TrainConfig)}
    aug_valid = {f.name for f in dataclasses.fields(AugmentConfig)}
    unknown = sorted(set(d) - valid) + [f"aug.{k}" for k in sorted(set(aug) - aug_valid)]
    if unknown and strict:
        if all(k.startswith("aug.") for k in unknown):  # name only the table the unknown keys are in
            raise ValueError(f"unknown config keys {unknown}; valid in aug: {', '.join(sorted(aug_valid))}")
        raise ValueError(f"unknown config keys {unknown}; valid: {sorted(valid)} and aug.{{{', '.join(sorted(aug_valid))}}}")
    aug = {k: v for k, v in aug.items() if k in aug_valid}
    return TrainConfig(**{k: v for k, v in d.items() if k in valid and k != "aug"}, aug=AugmentConfig(**aug))


def replace(cfg: TrainConfig, **changes) -> TrainConfig:
    """A copy with changes; keys 'aug_NAME' change the augmentation; None means 'not given'."""
    d = config_to_dict(cfg)
    for k, v in changes.items():
        if v is None:
            continue
        if k.startswith("aug_"):
            d["aug"][k[4:]] = v
        else:
            d[k] = v
    return config_from_dict(d, strict=True)
