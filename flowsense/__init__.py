"""flowsense: a numba-accelerated flow analyzer that flags reverse SSH tunnels and mining."""

from flowsense import _numba_env

_numba_env.configure()

__version__ = "0.1.0"
