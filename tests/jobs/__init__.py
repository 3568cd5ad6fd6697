"""Tests for cleanroom.jobs."""
