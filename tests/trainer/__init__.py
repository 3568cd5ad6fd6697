"""Tests for cleanroom.trainer."""
