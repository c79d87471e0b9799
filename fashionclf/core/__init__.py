"""The ground floor: typed settings, the training config, atomic file writes, the version. Imports nothing of fashionclf."""

__version__ = "0.1.0"
