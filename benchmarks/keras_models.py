"""Keras side of benchmarks/vs_keras.py: the seed study's four models, layer for layer as fashionclf builds them,
trained the seed's way (Adam 1e-3; Model 4 with augmentation layers and ReduceLROnPlateau; its EarlyStopping
is left out so that every epoch runs, as on fashionclf's side).

Runs inside the Keras venv (benchmarks/requirements-keras.txt); reads the arrays that vs_keras.py saved,
prints one JSON line with per-epoch times and test accuracy.
Usage: python keras_models.py ARRAYS.npz EPOCHS BATCH_SIZE [MODEL]   (MODEL: mlp, simple_cnn, tuned_cnn, advanced_cnn)
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

MEAN, STD = 0.2860, 0.3530


def prep(x):
    return ((x.astype("float32") / 255 - MEAN) / STD)[..., None]


def _conv_pool_bn(c):  # fashionclf.models.cnn._conv_pool_bn with 'same' padding
    return [layers.Conv2D(c, 3, padding="same", use_bias=False), layers.MaxPooling2D(), layers.BatchNormalization(), layers.ReLU()]


def _mlp():  # fashionclf.models.cnn.mlp: the seed's Model 1
    return [layers.Flatten(), layers.Dense(128, activation="relu"), layers.Dense(10)]


def _simple_cnn():  # fashionclf.models.cnn.simple_cnn: the seed's Model 2
    conv = [layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(), layers.Flatten()]
    return [*conv, layers.Dense(100, activation="relu"), layers.Dense(10)]


def _tuned_cnn():  # fashionclf.models.cnn.tuned_cnn: the seed's Model 3
    head = [layers.Flatten(), layers.Dense(128, activation="relu"), layers.Dropout(0.5), layers.Dense(10)]
    return [*_conv_pool_bn(32), *_conv_pool_bn(64), *head]


def _advanced_cnn():  # fashionclf.models.cnn.advanced_cnn: the seed's Model 4, with its augmentation (active in training only)
    aug = [layers.RandomRotation(10 / 360), layers.RandomZoom(0.1), layers.RandomTranslation(0.1, 0.1)]
    blocks = []
    for c in (32, 64, 128):
        blocks += [layers.Conv2D(c, 3, padding="same", use_bias=False), layers.BatchNormalization(), layers.ReLU(), *_conv_pool_bn(c)]
    head = [layers.GlobalAveragePooling2D(), layers.Dense(128, activation="relu"), layers.Dropout(0.3), layers.Dense(10)]
    return aug + blocks + head


BUILDERS = {"mlp": _mlp, "simple_cnn": _simple_cnn, "tuned_cnn": _tuned_cnn, "advanced_cnn": _advanced_cnn}


def build_model(name="tuned_cnn"):
    return keras.Sequential([keras.Input((28, 28, 1)), *BUILDERS[name]()])


def callbacks(name):
    """The seed's Model 4 LR callback (halve after 2 epochs without progress); none for Models 1-3. The seed's
    EarlyStopping (patience 5) is left out here, as fashionclf's early stopping is in vs_keras.py: every epoch runs
    on both sides, so per-epoch times and the epochs counted compare like for like."""
    if name != "advanced_cnn":
        return []
    return [keras.callbacks.ReduceLROnPlateau(patience=2, factor=0.5)]


def main():
    arrays, epochs, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    name = sys.argv[4] if len(sys.argv) > 4 else "tuned_cnn"
    d = np.load(arrays)
    x_tr, y_tr, x_va, y_va, x_te, y_te = (prep(d["train_x"]), d["train_y"], prep(d["val_x"]), d["val_y"], prep(d["test_x"]), d["test_y"])
    keras.utils.set_random_seed(0)
    model = build_model(name)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t0)

    times: list[float] = []
    t0 = time.perf_counter()
    fit_callbacks = [EpochTimer(), *callbacks(name)]
    model.fit(x_tr, y_tr, batch_size=batch, epochs=epochs, validation_data=(x_va, y_va), verbose=0, callbacks=fit_callbacks)
    total = time.perf_counter() - t0
    loss, acc = model.evaluate(x_te, y_te, batch_size=1024, verbose=0)
    print(
        json.dumps(
            {
                "framework": f"keras {keras.__version__}",
                "model": name,
                "batch_size": batch,
                "epochs": len(times),
                "epoch_seconds": times,
                "train_seconds": total,
                "test_accuracy": float(acc),
                # trainable only: Keras counts BatchNorm's moving statistics as parameters, PyTorch keeps them as buffers
                "params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
            }
        )
    )


if __name__ == "__main__":
    main()
