"""Tests for cleanroom.sdk."""
