# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""The package version, in a module of its own so that submodules (saved configs) can read it without importing the
package's `__init__`."""

__version__ = "0.2.0.dev0"
