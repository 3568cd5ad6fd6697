"""Faults that exist only in the test build (see noiseless.py); nothing under cleanroom/ names them."""
