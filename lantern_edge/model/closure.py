"""The installed packages a project depends on, read from their metadata, as corpus sources.

The closure of a requirement such as ``lantern-edge[export,dev]`` is resolved from the
installed distributions' Requires-Dist with their environment markers evaluated for this
interpreter and the extras asked for (an extra a dependency is required with is honoured too).
Nothing is hard-coded but the packaging tools (pip, setuptools, wheel), which are never part
of the corpus, and the root project, whose own code changes with every commit (the corpus must
depend only on installed versions). Packages installed but not in the closure are ignored.
Requirements that are not installed are reported, not fetched: the corpus is offline.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

PACKAGING_TOOLS = frozenset({"pip", "setuptools", "wheel"})
DEFAULT_CLOSURE = "lantern-edge[export,dev]"
LICENCE_CLASSIFIER = "License :: "


@dataclass(frozen=True)
class Source:
    """One origin of corpus files: a package (or the standard library) and its files."""
    name: str
    version: str
    licence: str
    files: tuple[tuple[str, Path], ...]   # (relative path: what the split hashes, file on disk)


def normalize(name: str) -> str:
    """PEP 503 name: 'Typing_Extensions' and 'typing-extensions' are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_class():
    try:
        from packaging.requirements import Requirement
    except ImportError as e:        # onnxruntime (a runtime dependency) requires it
        raise ImportError("the closure corpus needs the packaging library: pip install "
                          "packaging") from e
    return Requirement


def parse_requirement(text: str) -> tuple[str, tuple[str, ...]]:
    """'lantern-edge[export,dev]' -> ('lantern-edge', ('dev', 'export')); ValueError if bad."""
    Requirement = _requirement_class()
    try:
        req = Requirement(text)
    except Exception as e:          # packaging's InvalidRequirement
        reason = str(e).splitlines()[0]        # the rest is a drawing of where it failed
        raise ValueError(f"bad requirement {text!r} ({reason}); write it as "
                         f"NAME[EXTRA,...]") from e
    return req.name, tuple(sorted(req.extras))


def installed_distributions(path: list[str] | None = None
                            ) -> dict[str, importlib.metadata.Distribution]:
    """Distributions on ``path`` (default sys.path) by normalised name; the first one found
    wins, as it does for imports."""
    found: dict[str, importlib.metadata.Distribution] = {}
    for dist in importlib.metadata.distributions(path=list(sys.path if path is None else path)):
        name = dist.metadata["Name"]
        if name:
            found.setdefault(normalize(name), dist)
    return found


def dependency_closure(root: str, extras: tuple[str, ...] = (), path: list[str] | None = None
                       ) -> tuple[list[importlib.metadata.Distribution], list[str]]:
    """The installed distributions ``root[extras]`` depends on, directly or not.

    Returns:
        (distributions sorted by normalised name, without root and the packaging tools;
         normalised names of required distributions that are not installed).

    Raises:
        ValueError: root is not installed on ``path``.
    """
    Requirement = _requirement_class()
    installed = installed_distributions(path)
    root_name = normalize(root)
    if root_name not in installed:
        raise ValueError(f"{root} is not installed on this Python's path, so its dependency "
                         f"closure cannot be read; install it (pip install -e .) or name an "
                         f"installed distribution")
    activated: dict[str, set[str]] = {}      # distribution -> extras already expanded
    missing: set[str] = set()
    queue = [(root_name, set(extras))]
    while queue:
        name, wanted = queue.pop()
        done = activated.setdefault(name, set())
        new = (wanted | {""}) - done          # "" stands for the unconditional requirements
        if not new:
            continue
        done |= new
        for text in installed[name].requires or ():
            req = Requirement(text)
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in new):
                continue
            dep = normalize(req.name)
            if dep in PACKAGING_TOOLS:
                continue
            if dep not in installed:
                missing.add(dep)
                continue
            queue.append((dep, set(req.extras)))
    names = sorted(activated.keys() - {root_name})
    return [installed[n] for n in names], sorted(missing)


def licence_of(metadata) -> str:
    """SPDX License-Expression, else a one-line License field, else the licence classifiers
    (a License field that holds the whole licence text is not a name)."""
    expression = (metadata.get("License-Expression") or "").strip()
    if expression:
        return expression
    field = (metadata.get("License") or "").strip()
    if field and "\n" not in field and len(field) <= 80:
        return field
    classifiers = [c.split(" :: ")[-1] for c in metadata.get_all("Classifier") or ()
                   if c.startswith(LICENCE_CLASSIFIER)]
    return "; ".join(classifiers) or "unknown"


def package_source(dist: importlib.metadata.Distribution, keep) -> Source:
    """A distribution's installed .py files (from its RECORD), filtered by ``keep(relative)``.

    Relative paths are as installed (e.g. numpy/linalg/linalg.py), the same on every machine.
    """
    files = []
    for entry in dist.files or ():
        relative = entry.as_posix()
        if relative.endswith(".py") and not relative.startswith("..") and keep(relative):
            located = Path(dist.locate_file(entry))
            if located.is_file():
                files.append((relative, located))
    if dist.files is None:
        logger.warning("%s lists no installed files (no RECORD); it adds nothing to the corpus",
                       dist.metadata["Name"])
    return Source(normalize(dist.metadata["Name"]), dist.version, licence_of(dist.metadata),
                  tuple(sorted(files)))


def closure_sources(requirement: str = DEFAULT_CLOSURE, keep=lambda relative: True,
                    path: list[str] | None = None) -> tuple[list[Source], list[str]]:
    """Sources for every installed package in the closure of ``requirement``, and the names
    of the required packages that are missing."""
    root, extras = parse_requirement(requirement)
    dists, missing = dependency_closure(root, extras, path)
    return [package_source(d, keep) for d in dists], missing
