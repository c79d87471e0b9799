"""A fashionclf run as an MLflow pyfunc model, logged as code ("models from code"), never as a pickle.

MLflow stores this file with the model and runs it on `mlflow.pyfunc.load_model`; the weights come from
the run folder logged beside it as an artifact (safetensors + JSON), so loading unpickles nothing.

Input: a DataFrame with one column `image` of encoded image bytes (PNG, JPEG, ...; base64 strings
in JSON requests to `mlflow models serve`, which MLflow decodes for binary columns). Output: one row
per image with `label` (None when unknown), `confidence` (calibrated), `needs_review`, `unknown` (none of the
run's classes), and `probabilities` (one per class,
in the run's class order): what `fashionclf predict` gives for the same file.
"""

from __future__ import annotations

import base64

import mlflow
import numpy as np
import pandas as pd


class FashionclfModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from fashionclf.api import load_run

        self.run = load_run(context.artifacts["run"])

    def predict(self, context, model_input, params=None):
        from fashionclf.infer.predict import predict_scored, preprocess_file, results_from_probs

        column = model_input["image"] if isinstance(model_input, pd.DataFrame) else model_input
        blobs = [b if isinstance(b, (bytes, bytearray)) else base64.b64decode(b) for b in column]
        images = np.stack([preprocess_file(bytes(b), run=self.run) for b in blobs])
        probs, unknown = predict_scored(self.run, images)
        rows = results_from_probs(self.run, probs, top_k=1, unknown=unknown)  # as `fashionclf predict`: label None when unknown
        return pd.DataFrame(
            {
                "label": [r["label"] for r in rows],
                "confidence": [r["confidence"] for r in rows],
                "needs_review": [r["needs_review"] for r in rows],
                "unknown": [r["unknown"] for r in rows],
                "probabilities": [p.tolist() for p in probs],
            }
        )


mlflow.models.set_model(FashionclfModel())
