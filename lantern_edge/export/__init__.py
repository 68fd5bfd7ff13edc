"""lantern_edge.export: checkpoint -> verified ONNX artifacts directory (`lantern-export`).

Needs torch and onnx (the `[export]` extra); the runtime never imports it.
"""
