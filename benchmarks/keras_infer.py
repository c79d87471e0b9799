"""Keras side of benchmarks/inference_speed.py: predict() speed of the same tuned_cnn architecture.

Runs inside the Keras venv; weights are the fresh initial ones (speed does not depend on their values).
Prints one JSON line. Usage: python keras_infer.py ARRAYS.npz [single-image calls]
"""

import json
import statistics
import sys
import time

from keras_models import build_model, keras, np, prep

x = prep(np.load(sys.argv[1])["test_x"])
calls = int(sys.argv[2]) if len(sys.argv) > 2 else 200
keras.utils.set_random_seed(0)
model = build_model()

model.predict(x[:512], batch_size=256, verbose=0)  # warm-up: graph tracing
runs = []
for _ in range(5):
    t0 = time.perf_counter()
    model.predict(x, batch_size=256, verbose=0)
    runs.append(len(x) / (time.perf_counter() - t0))


# The same measurement as inference_speed.latency_ms, written again: this runs in .venv-keras, where
# fashionclf and its torch are not installed.
def latency(fn):
    for i in range(20):
        fn(x[i : i + 1])
    ms = []
    for i in range(calls):
        t0 = time.perf_counter()
        fn(x[i : i + 1])
        ms.append((time.perf_counter() - t0) * 1000)
    return statistics.median(ms)


print(
    json.dumps(
        {
            "framework": f"keras {keras.__version__} ({keras.backend.backend()})",
            "images_per_s_batch256": statistics.median(runs),
            "predict_1_image_ms": latency(lambda b: model.predict(b, verbose=0)),
            # Keras' own advice for single inputs is model(x), which skips predict()'s per-call set-up
            "call_1_image_ms": latency(lambda b: model(b, training=False)),
        }
    )
)
