"""optima-federated site agent: runs next to a data partner's OMOP CDM."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("optima-federated")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+local"
