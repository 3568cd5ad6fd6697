"""Tests for cleanroom.statistics."""
