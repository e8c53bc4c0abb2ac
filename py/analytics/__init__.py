"""analytics: a real-time event analytics API whose event loop never blocks."""

__version__ = "0.1.0"
