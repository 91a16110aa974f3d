"""Derived graphs of a bundle: `python -m export variant BUNDLE --fp16 | --ort-cuda | --trt-ready`.

Each variant is written under `BUNDLE/variants/<name>/<component>/` (model.onnx + model.onnx_data) and recorded,
with its validation gate against the portable fp32 graphs, in the manifest's `variants` section (format:
engine/variants.py). Building: export/variants/build.py; the graph passes: fp16.py, ort_cuda.py, trt_ready.py.
"""
