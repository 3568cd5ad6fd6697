"""Tests for cleanroom.crypto."""
