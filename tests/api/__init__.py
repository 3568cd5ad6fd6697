"""Tests for cleanroom.api."""
