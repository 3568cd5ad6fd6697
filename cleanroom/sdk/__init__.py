"""The cleanroom client SDK. Start with `Client`; the CLI is a thin layer over it."""

from cleanroom.sdk.client import Client
from cleanroom.sdk.cohort import Site
from cleanroom.sdk.errors import CleanroomClientError
from cleanroom.sdk.schema import load_schema

__all__ = ["Client", "CleanroomClientError", "Site", "load_schema"]
