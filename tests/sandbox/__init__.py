"""Tests for cleanroom.sandbox."""
