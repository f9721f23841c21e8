"""nrt: near-real-time calibrated high-resolution satellite precipitation ensembles."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nrt")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
