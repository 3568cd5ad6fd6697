"""Tests for cleanroom.storage."""
