"""The package's exception types. Each message names the problem and the fix."""


class LanternError(Exception):
    """Base class of lantern-edge's own errors."""


class CheckpointError(LanternError, ValueError):
    """A checkpoint file is missing, corrupt, of a foreign kind, or does not fit its config."""


class ArtifactError(LanternError, ValueError):
    """An artifacts directory is missing a file, has a bad manifest, or a hash mismatch."""


class TokenizerError(LanternError, ValueError):
    """Text cannot be encoded with the model's vocabulary, or a tokenizer file is unusable."""
