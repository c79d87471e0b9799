"""Serving: the HTTP app and its page, batch jobs, ONNX export, Ray."""
