"""The dataset a training reads: an image folder in any layout, or Fashion-MNIST, with the quick-check limits and
how it was loaded recorded for `train --resume`."""

from __future__ import annotations

from pathlib import Path

from fashionclf.core.config import TrainConfig
from fashionclf.data.fashion_mnist import FashionMNIST, load_fashion_mnist
from fashionclf.data.folders import add_converted_photos, load_image_folder


def load_data(
    cfg: TrainConfig,
    data: str | Path | None = None,
    val_data: str | Path | None = None,
    image_size: int | None = None,
    data_dir: str | Path | None = None,
    allow_download: bool = True,
    train_limit: int | None = None,
    data_cache: str = "auto",
    test_limit: int | None = None,
) -> tuple[FashionMNIST, list[str]]:
    """The dataset a config trains on: an image folder (data, any layout; its pixels in memory or mapped
    from disk as data_cache says, fashionclf.data.store) or Fashion-MNIST (with cfg.extra_photos mixed in).
    train_limit, test_limit: keep the first N training or test images only (quick checks; a run's test figures are
    then of those N). Returns it and one message per file left out."""
    for flag, n in (("--train-limit", train_limit), ("--test-limit", test_limit)):
        if n is not None and n < 1:
            raise ValueError(f"{flag} {n}: expected a positive number of images")
    if data is not None:
        if cfg.extra_photos:
            raise ValueError("--extra-photos mixes photos into Fashion-MNIST training; with --data the photos are the dataset already")
        ds, skipped = load_image_folder(data, val_data, image_size or 128, split_seed=cfg.split_seed, cache=data_cache)
    else:
        if val_data is not None or image_size:
            raise ValueError("--val-data and --image-size go with --data FOLDER (an image-folder dataset)")
        ds = load_fashion_mnist(data_dir, val_size=cfg.val_size, split_seed=cfg.split_seed, allow_download=allow_download)
        skipped = []
    if train_limit:
        # The official order is already shuffled, so a prefix is close to class-balanced.
        ds.train_x, ds.train_y = ds.train_x[:train_limit], ds.train_y[:train_limit]
    if test_limit:
        ds.test_x, ds.test_y = ds.test_x[:test_limit], ds.test_y[:test_limit]
    if data is None and cfg.extra_photos:
        skipped += add_converted_photos(ds, cfg.extra_photos, cfg.extra_class_map, cfg.extra_repeat)
    # How they were loaded, kept with a training's checkpoint so that `train --resume` loads them again.
    where = {k: v if v is None else str(Path(v).absolute()) for k, v in (("data", data), ("val_data", val_data), ("data_dir", data_dir))}
    more = {"image_size": image_size, "allow_download": allow_download, "train_limit": train_limit, "data_cache": data_cache}
    more |= {"test_limit": test_limit} if test_limit else {}  # absent when unused: older checkpoints resume alike
    ds.load_options = {**where, **more}
    return ds, skipped
