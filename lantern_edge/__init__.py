"""lantern-edge: run LANTERN adaptive-compute language models with NumPy over ONNX Runtime.

Only the runtime is imported here, so `import lantern_edge` needs numpy, onnxruntime and
tokenizers, never torch.
"""

from .errors import ArtifactError, CheckpointError, LanternError, TokenizerError
from .runtime.generate import (GenerationResult, Generator, Runtime, StreamedToken, TokenStream,
                               TraceEntry)
from .runtime.options import GenerationOptions
from .version import __version__

__all__ = ["Runtime", "GenerationOptions", "GenerationResult", "Generator", "StreamedToken",
           "TokenStream", "TraceEntry",
           "ArtifactError", "CheckpointError", "TokenizerError", "LanternError", "__version__"]
