"""Allocates and touches memory without end at import time."""

import hostcfg

hostcfg.mark()
hoard = []
while True:
    hoard.append(bytearray(64 << 20))  # bytearray zero-fills: the pages are really touched
