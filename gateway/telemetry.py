"""Tracing with OpenTelemetry, off unless `[telemetry] otlp_endpoint` names a collector.

Off, nothing here is imported beyond this module and the request path pays one `is None`
check. On, each process (every worker) exports over OTLP/HTTP in batches: a span per request
(continuing a W3C `traceparent` only when it comes from a trusted proxy, as the request id
does), `authenticate` around the gateway's decision, `store.*` and `users.*` around every call
to the session store and the users source, and `upstream` around the exchange with the
upstream, which receives the trace in its own `traceparent`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from gateway.config import Config
from gateway.core.context import SCOPE_KEY
from gateway.core.ingress import Header, Network, peer_trusted

log = logging.getLogger("gateway.telemetry")
T = TypeVar("T")
_PROPAGATED = (b"traceparent", b"tracestate")


class Tracing:
    """The tracer of one process, and the few operations the request path needs."""

    def __init__(self, config: Config) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        telemetry = config.telemetry
        resource = Resource.create({"service.name": telemetry.service_name})
        self.provider = TracerProvider(resource=resource)
        exporter = OTLPSpanExporter(endpoint=telemetry.otlp_endpoint.rstrip("/") + "/v1/traces")
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("gateway")
        self.propagator = TraceContextTextMapPropagator()
        self.trusted: Sequence[Network] = tuple(config.server.trusted_proxies)

    def request(
        self, scope: dict, receive: Callable, send: Callable, serve: Callable
    ) -> Awaitable[None]:
        """Serve one request inside its server span."""
        return self._request(scope, receive, send, serve)

    async def _request(self, scope: dict, receive: Callable, send: Callable, serve) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        parent = None
        if peer_trusted(scope, self.trusted):
            carrier = {
                k.decode("latin-1"): v.decode("latin-1")
                for k, v in scope["headers"]
                if k in _PROPAGATED
            }
            parent = self.propagator.extract(carrier)
        method = scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET"
        with self.tracer.start_as_current_span(
            f"{method} {scope.get('path', '')}"[:200],
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope.get("path", "")},
        ) as span:

            async def traced_send(message: dict) -> None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            await serve(scope, receive, traced_send)
            ctx = scope.get(SCOPE_KEY)
            if ctx is not None:
                span.set_attribute("gateway.request_id", ctx.request_id)
                if ctx.route is not None:
                    span.set_attribute("gateway.route", ctx.route.name)
                if ctx.identity is not None:
                    span.set_attribute("enduser.id", ctx.identity.sub)

    def span(self, name: str, **attributes: Any) -> Any:
        """A child span of the current one (a context manager)."""
        return self.tracer.start_as_current_span(name, attributes=attributes or None)

    def inject(self, headers: list[Header]) -> list[Header]:
        """`headers` without any client-sent trace context, with the current span's."""
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier)
        kept = [(k, v) for k, v in headers if k not in _PROPAGATED]
        return kept + [(k.encode("latin-1"), v.encode("latin-1")) for k, v in carrier.items()]

    def traced(self, inner: T, prefix: str, names: dict[str, str] | None = None) -> T:
        """`inner` with a span around each of its coroutine methods (`prefix.method`, or the
        name `names` gives the method)."""
        return _Traced(inner, prefix, self, names or {})  # type: ignore[return-value]

    def shutdown(self) -> None:
        """Export what is batched, then stop."""
        self.provider.shutdown()


class _Traced:
    """Delegates to `inner`; a coroutine method runs inside a span named after it."""

    def __init__(self, inner: Any, prefix: str, tracing: Tracing, names: dict[str, str]) -> None:
        self._inner = inner
        self._prefix = prefix
        self._tracing = tracing
        self._names = names

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr
        span_name = self._names.get(name) or f"{self._prefix}.{name}"
        tracing = self._tracing

        async def call(*args: Any, **kwargs: Any) -> Any:
            with tracing.span(span_name):
                return await attr(*args, **kwargs)

        return call


_process: Tracing | None = None


def process_tracing(config: Config) -> Tracing | None:
    """This process's tracing, made once (a reload keeps it); None while it is off."""
    global _process
    if not config.telemetry.otlp_endpoint:
        return None
    if _process is None:
        _process = Tracing(config)
    return _process
