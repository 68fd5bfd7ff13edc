__version__ = "0.1.0"

# Version of the artifacts manifest (lantern.json) written by lantern-export and read by the
# runtime; bump on any incompatible change to docs/ARTIFACTS.md.
MANIFEST_FORMAT_VERSION = 1
