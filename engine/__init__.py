"""sdedge run time: ONNX Runtime/TensorRT execution around a NumPy denoising loop. Never imports torch."""
