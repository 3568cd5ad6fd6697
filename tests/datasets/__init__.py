"""Tests for cleanroom.datasets."""
