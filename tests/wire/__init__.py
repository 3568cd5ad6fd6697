"""Tests for cleanroom.wire."""
