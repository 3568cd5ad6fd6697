"""Tests for cleanroom.observability: logs, metrics, and the alert rules and dashboard built on them."""
