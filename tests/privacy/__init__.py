"""Tests for cleanroom.privacy."""
