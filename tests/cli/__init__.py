"""Tests for cleanroom.cli."""
