"""Tests for cleanroom.models."""
