"""The SDK's release calls, mixed into Client: list, read, download and verify releases."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc

from cleanroom.sdk.errors import CleanroomClientError, from_rpc_error
from cleanroom.sdk.release_check import Check, verify_release
from cleanroom.v1 import releases_pb2, releases_pb2_grpc

KINDS = {"training": releases_pb2.RELEASE_KIND_TRAINING, "evaluation": releases_pb2.RELEASE_KIND_EVALUATION,
         "statistics": releases_pb2.RELEASE_KIND_STATISTICS}


def kind_name(value: int) -> str:
    """A ReleaseKind value as "training", "evaluation" or "statistics"."""
    return next((name for name, kind in KINDS.items() if kind == value), "unknown")


class ReleaseCalls:
    """ListReleases, GetRelease, DownloadReleaseArtifact, and verify_release over them."""

    releases: releases_pb2_grpc.ReleaseServiceStub
    _metadata: tuple[tuple[str, str], ...]
    _call: Callable[..., Any]
    _pages: Callable[..., Iterator[Any]]

    def list_releases(self, *, dataset: str = "", manufacturer: str = "", kind: str = "",
                      page_size: int = 0) -> Iterator[releases_pb2.Release]:
        """Releases the caller may see (kind: "training", "evaluation" or "statistics"; "" for all)."""
        request = releases_pb2.ListReleasesRequest(dataset=dataset, manufacturer=manufacturer, kind=KINDS.get(kind, releases_pb2.RELEASE_KIND_UNSPECIFIED),
                                                   page_size=page_size)
        return self._pages(self.releases.ListReleases, request, "releases")

    def get_release(self, name: str) -> releases_pb2.Release:
        return self._call(self.releases.GetRelease, releases_pb2.GetReleaseRequest(name=name))  # type: ignore[no-any-return]

    def download_release_artifact(self, release: str, artifact: str) -> bytes:
        request = releases_pb2.DownloadReleaseArtifactRequest(release=release, artifact=artifact)
        try:
            return b"".join(c.data for c in self.releases.DownloadReleaseArtifact(request, metadata=self._metadata))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def download_release(self, release: releases_pb2.Release) -> dict[str, bytes | None]:
        """Every artefact's stored bytes; None for one the server could not read back intact (DATA_LOSS)."""
        files: dict[str, bytes | None] = {}
        for artifact in release.artifacts:
            try:
                files[artifact.name] = self.download_release_artifact(release.name, artifact.name)
            except CleanroomClientError as error:
                if error.code is not grpc.StatusCode.DATA_LOSS:
                    raise
                files[artifact.name] = None
        return files

    def verify_release(self, name: str, *, pinned_root_pem: bytes, allowed_measurements: Iterable[str]) -> list[Check]:
        """Reads the release, downloads every artefact from the store and runs every check against
        the root you pinned (never the one the server sends today)."""
        release = self.get_release(name)
        return verify_release(release, self.download_release(release), pinned_root_pem=pinned_root_pem,
                              allowed_measurements=allowed_measurements)
