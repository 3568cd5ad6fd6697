"""Thin servicer for DP jobs."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from cleanroom.api.guard import caller
from cleanroom.domain.idempotency import RequestKey
from cleanroom.domain.job_params import JobParams
from cleanroom.domain.jobs import Job
from cleanroom.domain.pagination import next_page_token, parse_page
from cleanroom.jobs.service import JobService
from cleanroom.server.idempotency import Idempotency, check_request_id, fingerprint
from cleanroom.v1 import jobs_pb2, jobs_pb2_grpc
from cleanroom.wire.jobs import evaluation_params_from_proto, job_to_proto, training_params_from_proto


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, jobs: JobService, idempotency: Idempotency) -> None:
        self._jobs = jobs
        self._idempotency = idempotency

    def _proto(self, job: Job) -> jobs_pb2.Job:
        return job_to_proto(job, self._jobs.artifacts(job), self._jobs.linkage(job))

    def _submit(self, context: grpc.ServicerContext, method: str, request: jobs_pb2.SubmitTrainingRequest | jobs_pb2.SubmitEvaluationRequest,
                params: JobParams) -> jobs_pb2.Job:
        check_request_id(request.request_id)
        principal = caller(context)
        key = RequestKey(principal.id, method, request.request_id)
        return self._idempotency.run(key, fingerprint(request), jobs_pb2.Job, lambda: self._proto(
            self._jobs.submit(principal, request.spec.model, request.spec.dataset, params)))

    def SubmitTraining(self, request: jobs_pb2.SubmitTrainingRequest, context: grpc.ServicerContext) -> jobs_pb2.Job:
        return self._submit(context, "SubmitTraining", request, training_params_from_proto(request.spec))

    def SubmitEvaluation(self, request: jobs_pb2.SubmitEvaluationRequest, context: grpc.ServicerContext) -> jobs_pb2.Job:
        return self._submit(context, "SubmitEvaluation", request, evaluation_params_from_proto(request.spec))

    def GetJob(self, request: jobs_pb2.GetJobRequest, context: grpc.ServicerContext) -> jobs_pb2.Job:
        return self._proto(self._jobs.get(caller(context), request.name))

    def ListJobs(self, request: jobs_pb2.ListJobsRequest, context: grpc.ServicerContext) -> jobs_pb2.ListJobsResponse:
        page = parse_page(request.page_size, request.page_token)
        jobs = self._jobs.list(caller(context), page)
        return jobs_pb2.ListJobsResponse(jobs=[self._proto(j) for j in jobs], next_page_token=next_page_token([j.id for j in jobs], page.size))

    def WatchJob(self, request: jobs_pb2.WatchJobRequest, context: grpc.ServicerContext) -> Iterator[jobs_pb2.Job]:
        for job in self._jobs.watch(caller(context), request.name, active=context.is_active):
            yield self._proto(job)

    def CancelJob(self, request: jobs_pb2.CancelJobRequest, context: grpc.ServicerContext) -> jobs_pb2.Job:
        return self._proto(self._jobs.cancel(caller(context), request.name))

    def DownloadArtifact(self, request: jobs_pb2.DownloadArtifactRequest, context: grpc.ServicerContext) -> Iterator[jobs_pb2.ArtifactChunk]:
        for chunk in self._jobs.download(caller(context), request.job, request.artifact):
            yield jobs_pb2.ArtifactChunk(data=chunk)
