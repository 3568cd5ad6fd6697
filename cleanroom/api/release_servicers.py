"""Thin servicer for releases (conversion in cleanroom.wire.releases)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from cleanroom.api.guard import caller
from cleanroom.domain.pagination import next_page_token, parse_page
from cleanroom.domain.releases import release_id_from_name
from cleanroom.jobs.releases import Filter, ReleaseService
from cleanroom.v1 import releases_pb2, releases_pb2_grpc
from cleanroom.wire.releases import kind_from_proto, optional_id, release_to_proto


class ReleaseServicer(releases_pb2_grpc.ReleaseServiceServicer):
    def __init__(self, releases: ReleaseService) -> None:
        self._releases = releases

    def ListReleases(self, request: releases_pb2.ListReleasesRequest, context: grpc.ServicerContext) -> releases_pb2.ListReleasesResponse:
        page = parse_page(request.page_size, request.page_token)
        where = Filter(optional_id(request.dataset, "datasets/", "dataset"), optional_id(request.manufacturer, "principals/", "manufacturer"),
                       kind_from_proto(request.kind))
        releases = self._releases.list(caller(context), page, where)
        return releases_pb2.ListReleasesResponse(releases=[release_to_proto(r, page=False) for r in releases],
                                                 next_page_token=next_page_token([r.id for r in releases], page.size))

    def GetRelease(self, request: releases_pb2.GetReleaseRequest, context: grpc.ServicerContext) -> releases_pb2.Release:
        viewed = self._releases.get(caller(context), release_id_from_name(request.name))
        return release_to_proto(viewed.release, viewed.ledger_events)

    def DownloadReleaseArtifact(self, request: releases_pb2.DownloadReleaseArtifactRequest,
                                context: grpc.ServicerContext) -> Iterator[releases_pb2.ReleaseArtifactChunk]:
        release_id = release_id_from_name(request.release, "release")
        for chunk in self._releases.download(caller(context), release_id, request.artifact):
            yield releases_pb2.ReleaseArtifactChunk(data=chunk)
