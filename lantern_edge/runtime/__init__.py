"""The NumPy + ONNX Runtime side of lantern-edge. Imports numpy, onnxruntime, tokenizers only."""
