"""optima-federated coordinator: sends studies to sites, pools and presents results."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("optima-federated")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+local"
