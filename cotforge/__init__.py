"""cotforge: Discrimination-Calibration chain-of-thought corpora from multimodal sentiment datasets."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cotforge")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"
