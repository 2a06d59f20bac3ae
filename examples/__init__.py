"""Examples: a local config (``examples/config``) and custom processing code (``examples/steps.py``)."""
