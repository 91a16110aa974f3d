"""Checkpoint → sdedge bundle (ONNX + manifest). Needs torch: install the `export` extra."""
