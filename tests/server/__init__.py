"""Tests for cleanroom.server."""
