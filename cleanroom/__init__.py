"""cleanroom: a secure data clean-room service for medical data."""

__version__ = "0.1.0"
