"""fp32 artifacts -> INT8 graphs with a measured quality report (onnx + onnxruntime)."""
