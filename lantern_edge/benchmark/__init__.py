"""`lantern-edge bench`: decode speed, time to first token, peak memory and the controller's
cost shape of one artifacts directory, against the PyTorch reference, in one invocation.

The ONNX rows need only the runtime's dependencies (numpy, onnxruntime, tokenizers); the PyTorch
rows import torch in their own worker processes. Entry point: `cli.main(argv) -> int`.
"""
