"""Optional dependencies: which extra installs each one, so a command can say so in one line.

The runtime needs numpy, onnxruntime and tokenizers only. Training, export and evaluation need
the `export` extra (torch, onnx); `quantize` needs only onnx (the `quantize` extra), so INT8
graphs can be made on a machine without torch; the evaluation figures need matplotlib (`dev`);
`serve` needs the ASGI stack (the `serve` extra).
"""

from __future__ import annotations

# torch first and pinned: an unpinned torch resolves to a CUDA build (several GB)
_EXPORT = 'pip install torch==2.13.0 "lantern-edge[export]"'
_SERVE = 'pip install "lantern-edge[serve]"'
_INSTALL = {
    "torch": _EXPORT, "onnx": _EXPORT, "onnxscript": _EXPORT, "tqdm": _EXPORT,
    "sympy": _EXPORT, "matplotlib": 'pip install "lantern-edge[dev]"',
    "starlette": _SERVE, "uvicorn": _SERVE, "pydantic": _SERVE, "anyio": _SERVE,
}
# commands whose needs are a subset of the export extra's
_COMMAND_INSTALL = {"quantize": {"onnx": 'pip install "lantern-edge[quantize]"',
                                 "sympy": 'pip install "lantern-edge[quantize]"'}}


def install_hint(module: str | None, command: str = "") -> str | None:
    """The pip line that installs `module` for `command`, or None if it is not optional."""
    top = (module or "").split(".")[0]
    return _COMMAND_INSTALL.get(command, {}).get(top) or _INSTALL.get(top)


def missing_message(prog: str, error: ModuleNotFoundError, command: str = "") -> str | None:
    """`prog needs torch: pip install ...`, or None when the module is not an optional one."""
    hint = install_hint(error.name, command)
    return f"{prog} needs {error.name.split('.')[0]}: {hint}" if hint else None
