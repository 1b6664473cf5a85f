"""hubwatchd: drop folders in, Data Hub container tasks out, every file once."""

__version__ = "0.1.0"
