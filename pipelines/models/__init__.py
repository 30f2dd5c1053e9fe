"""Model wrappers (ONNX through onnxruntime) and verified model files."""
