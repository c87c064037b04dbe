"""gRPC surface of monitoring: drift and segment reports, alerts (listed and streamed),
per-model policies, feedback labels, and live shadow comparisons."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any

import grpc

from flywheel.app import ServiceContext
from flywheel.errors import NotFound
from flywheel.grpc import GrpcServer
from flywheel.grpc.context import actor
from flywheel.paging import decode_token, next_token, page_size
from flywheel.retry import Backoff
from flywheel.v1 import monitoring_pb2, monitoring_pb2_grpc
from services.monitoring import challenger_reads, evaluator, limits
from services.monitoring import policy as policies
from services.monitoring.alerts import alerts_after
from services.monitoring.records import record_labels
from services.monitoring.watch import AlertFeed

M = monitoring_pb2
Context = grpc.aio.ServicerContext[Any, Any]
DEFAULT_WINDOW_COUNT = 10


class MonitoringService(monitoring_pb2_grpc.MonitoringServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._pool = ctx.pool
        self._feed = AlertFeed(ctx.pool, ctx.tasks, Backoff.from_settings(ctx.settings))

    async def GetDriftReport(self, request: M.GetDriftReportRequest, context: Context) -> M.GetDriftReportResponse:
        limits.drift_report_request(request)
        count = request.window_count or DEFAULT_WINDOW_COUNT
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT report FROM windows WHERE model = $1 AND ($2 = 0 OR version = $2)"
                " AND ($3 = '' OR window_id = $3) ORDER BY created_at DESC LIMIT $4",
                request.model_name,
                request.model_version,
                request.window_id,
                count,
            )
        if request.window_id and not rows:
            raise NotFound(f"no window {request.window_id!r} for model {request.model_name!r}", field="window_id")
        return M.GetDriftReportResponse(windows=[M.WindowReport.FromString(r["report"]) for r in rows])

    async def ListAlerts(self, request: M.ListAlertsRequest, context: Context) -> M.ListAlertsResponse:
        limits.alerts_request(request)
        size, offset = page_size(request.page_size), decode_token(request.page_token)
        since = request.since.ToDatetime(tzinfo=UTC) if request.HasField("since") else None
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT alert FROM alerts WHERE ($1 = '' OR model = $1) AND ($2 = 0 OR kind = $2)"
                " AND ($3::timestamptz IS NULL OR created_at >= $3) ORDER BY created_at DESC LIMIT $4 OFFSET $5",
                request.model_name,
                request.kind,
                since,
                size,
                offset,
            )
        return M.ListAlertsResponse(
            alerts=[M.Alert.FromString(r["alert"]) for r in rows], next_page_token=next_token(offset, size, len(rows))
        )

    async def GetSegmentReport(
        self, request: M.GetSegmentReportRequest, context: Context
    ) -> M.GetSegmentReportResponse:
        limits.segment_report_request(request)
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT segments FROM windows WHERE model = $1 AND kind = 'quality' AND segments IS NOT NULL"
                " AND ($2 = 0 OR version = $2) AND ($3 = '' OR window_id = $3) ORDER BY created_at DESC LIMIT 1",
                request.model_name,
                request.model_version,
                request.window_id,
            )
        if row is None:
            raise NotFound(f"no segment report for model {request.model_name!r} yet", field="model_name")
        report = M.GetSegmentReportResponse.FromString(row["segments"])
        if request.field:
            kept_segments = [s for s in report.segments if s.segment.field == request.field]
            kept_gaps = [g for g in report.gaps if g.field == request.field]
            del report.segments[:]
            del report.gaps[:]
            report.segments.extend(kept_segments)
            report.gaps.extend(kept_gaps)
        return report

    async def SetMonitoringPolicy(
        self, request: M.SetMonitoringPolicyRequest, context: Context
    ) -> M.SetMonitoringPolicyResponse:
        policies.check(request.policy)
        limits.text(request.actor, "actor")
        async with self._pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO policies (model, policy, updated_by) VALUES ($1, $2, $3)"
                " ON CONFLICT (model) DO UPDATE SET policy = $2, updated_by = $3, updated_at = now()",
                request.policy.model_name,
                request.policy.SerializeToString(),
                actor(context, request.actor),
            )
            return M.SetMonitoringPolicyResponse(policy=await evaluator.load_policy(conn, request.policy.model_name))

    async def GetMonitoringPolicy(
        self, request: M.GetMonitoringPolicyRequest, context: Context
    ) -> M.GetMonitoringPolicyResponse:
        limits.text(request.model_name, "model_name")
        async with self._pool.acquire() as conn:
            return M.GetMonitoringPolicyResponse(policy=await evaluator.load_policy(conn, request.model_name))

    async def RecordFeedback(self, request: M.RecordFeedbackRequest, context: Context) -> M.RecordFeedbackResponse:
        limits.feedback_request(request)
        async with self._pool.acquire() as conn, conn.transaction():
            accepted, matched = await record_labels(conn, request.model_name, list(request.labels))
        return M.RecordFeedbackResponse(accepted=accepted, matched=matched)

    async def GetShadowComparison(
        self, request: M.GetShadowComparisonRequest, context: Context
    ) -> M.GetShadowComparisonResponse:
        limits.shadow_comparison_request(request)
        async with self._pool.acquire() as conn:
            result = await challenger_reads.comparison(
                conn, request.model_name, request.challenger_version, request.max_rows
            )
        return M.GetShadowComparisonResponse(comparison=result)

    async def GetCanaryReport(self, request: M.GetCanaryReportRequest, context: Context) -> M.GetCanaryReportResponse:
        limits.canary_report_request(request)
        since = request.since.ToDatetime(tzinfo=UTC)
        labels_since = request.labels_since.ToDatetime(tzinfo=UTC) if request.HasField("labels_since") else since
        async with self._pool.acquire() as conn:
            report = await challenger_reads.canary(
                conn, request.model_name, request.canary_version, since, labels_since
            )
        return M.GetCanaryReportResponse(report=report)

    async def WatchAlerts(
        self, request: M.WatchAlertsRequest, context: Context
    ) -> AsyncIterator[M.WatchAlertsResponse]:
        limits.watch_request(request)
        async with self._pool.acquire() as conn:
            since = await conn.fetchval("SELECT now()")
        # Tells the caller the stream is open: every alert committed from here on will be sent, so a
        # backfill (ListAlerts) started after this leaves no gap.
        await context.send_initial_metadata(())
        kinds = list(request.kinds)
        while True:
            changed = self._feed.changed()
            async with self._pool.acquire() as conn:
                rows = await alerts_after(conn, since, request.model_name, kinds)
            for r in rows:
                since = r["created_at"]
                yield M.WatchAlertsResponse(alert=M.Alert.FromString(r["alert"]))
            await self._feed.wait(changed)


def register(server: GrpcServer, ctx: ServiceContext) -> list[str]:
    server.add_servicer(monitoring_pb2_grpc.add_MonitoringServiceServicer_to_server, MonitoringService(ctx))
    return [monitoring_pb2.DESCRIPTOR.services_by_name["MonitoringService"].full_name]
