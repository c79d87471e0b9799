"""Keras side of benchmarks/vs_keras.py: the same tuned_cnn architecture, trained by Keras.

Runs inside the Keras venv (benchmarks/requirements-keras.txt); reads the arrays that
vs_keras.py saved, prints one JSON line with per-epoch times and test accuracy.
Usage: python keras_tuned_cnn.py ARRAYS.npz EPOCHS BATCH_SIZE
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


# Layer for layer the model of fashionclf.models.cnn.tuned_cnn (conv -> pool -> BN -> ReLU, twice; Dense(128); Dropout 0.5).
def build_model():
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(32, 3, padding="same", use_bias=False),
            layers.MaxPooling2D(),
            layers.BatchNormalization(),
            layers.ReLU(),
            layers.Conv2D(64, 3, padding="same", use_bias=False),
            layers.MaxPooling2D(),
            layers.BatchNormalization(),
            layers.ReLU(),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dropout(0.5),
            layers.Dense(10),
        ]
    )


def main():
    arrays, epochs, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    d = np.load(arrays)
    x_tr, y_tr, x_va, y_va, x_te, y_te = (prep(d["train_x"]), d["train_y"], prep(d["val_x"]), d["val_y"], prep(d["test_x"]), d["test_y"])
    keras.utils.set_random_seed(0)
    model = build_model()
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
    model.fit(x_tr, y_tr, batch_size=batch, epochs=epochs, validation_data=(x_va, y_va), verbose=0, callbacks=[EpochTimer()])
    total = time.perf_counter() - t0
    loss, acc = model.evaluate(x_te, y_te, batch_size=1024, verbose=0)
    print(
        json.dumps(
            {
                "framework": f"keras {keras.__version__}",
                "batch_size": batch,
                "epochs": epochs,
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
