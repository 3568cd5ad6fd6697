"""Thin servicer for DP jobs."""

from __future__ import annotations

from collections.abc import Iterator

from cleanroom.api.guard import CallContext
from cleanroom.domain.idempotency import RequestKey
from cleanroom.domain.jobs import Job, JobKind
from cleanroom.domain.pagination import next_page_token, parse_page
from cleanroom.jobs.service import JobService
from cleanroom.server.idempotency import Idempotency, check_request_id, fingerprint
from cleanroom.v1 import jobs_pb2, jobs_pb2_grpc
from cleanroom.wire import convert
from cleanroom.wire import jobs as jobspec


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, jobs: JobService, idempotency: Idempotency) -> None:
        self._jobs = jobs
        self._idempotency = idempotency

    def _proto(self, job: Job) -> jobs_pb2.Job:
        return convert.job_to_proto(job, self._jobs.artifacts(job))

    def _submit(self, context: CallContext, method: str, request, kind: JobKind, params: dict) -> jobs_pb2.Job:  # type: ignore[no-untyped-def]
        check_request_id(request.request_id)
        key = RequestKey(context.principal.id, method, request.request_id)
        return self._idempotency.run(key, fingerprint(request), jobs_pb2.Job, lambda: self._proto(
            self._jobs.submit(context.principal, kind, request.spec.model, request.spec.dataset, params)))

    def SubmitTraining(self, request: jobs_pb2.SubmitTrainingRequest, context: CallContext) -> jobs_pb2.Job:
        return self._submit(context, "SubmitTraining", request, JobKind.TRAINING, jobspec.training_parameters(request.spec))

    def SubmitEvaluation(self, request: jobs_pb2.SubmitEvaluationRequest, context: CallContext) -> jobs_pb2.Job:
        return self._submit(context, "SubmitEvaluation", request, JobKind.EVALUATION, jobspec.evaluation_parameters(request.spec))

    def GetJob(self, request: jobs_pb2.GetJobRequest, context: CallContext) -> jobs_pb2.Job:
        return self._proto(self._jobs.get(context.principal, request.name))

    def ListJobs(self, request: jobs_pb2.ListJobsRequest, context: CallContext) -> jobs_pb2.ListJobsResponse:
        page = parse_page(request.page_size, request.page_token)
        jobs = self._jobs.list(context.principal, page)
        return jobs_pb2.ListJobsResponse(jobs=[self._proto(j) for j in jobs], next_page_token=next_page_token([j.id for j in jobs], page.size))

    def WatchJob(self, request: jobs_pb2.WatchJobRequest, context: CallContext) -> Iterator[jobs_pb2.Job]:
        for job in self._jobs.watch(context.principal, request.name, active=context.is_active):
            yield self._proto(job)

    def CancelJob(self, request: jobs_pb2.CancelJobRequest, context: CallContext) -> jobs_pb2.Job:
        return self._proto(self._jobs.cancel(context.principal, request.name))

    def DownloadArtifact(self, request: jobs_pb2.DownloadArtifactRequest, context: CallContext) -> Iterator[jobs_pb2.ArtifactChunk]:
        for chunk in self._jobs.download(context.principal, request.job, request.artifact):
            yield jobs_pb2.ArtifactChunk(data=chunk)
