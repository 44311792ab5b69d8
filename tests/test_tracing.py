"""OpenTelemetry tracing: a real gateway exports its spans over OTLP/HTTP to a real receiver.

The receiver is an HTTP server on 127.0.0.1 that decodes each ExportTraceServiceRequest
protobuf as a collector would. The upstream records the `traceparent` it was sent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import Gateway, make_gateway, standard_routes
from tests.upstream import RecordingUpstream

FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100"}  # the SDK's batch delay, in ms
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_PARENT = f"00-{CLIENT_TRACE}-b7ad6b7169203331-01"


class Receiver:
    """An OTLP/HTTP trace receiver: POST /v1/traces, protobuf bodies, spans kept in order."""

    def __init__(self) -> None:
        self.spans: list = []
        self.paths: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.paths.append(self.path)
                for resource_spans in request.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        receiver.spans.extend(scope_spans.spans)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def trace(self, trace_id: str, timeout: float = 10.0, least: int = 1) -> list:
        """The spans of one trace, once at least `least` of them arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [s for s in self.spans if s.trace_id.hex() == trace_id]
            if len(found) >= least:
                time.sleep(0.3)  # the rest of the batch
                return [s for s in self.spans if s.trace_id.hex() == trace_id]
            time.sleep(0.05)
        raise AssertionError(f"no spans of trace {trace_id} (have {len(self.spans)})")

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()


def traced_gateway(directory, upstream, receiver, trusted: bool) -> Gateway:
    proxies = 'trusted_proxies = ["127.0.0.1/32"]' if trusted else ""
    extra = f"""
[server]
{proxies}

[telemetry]
otlp_endpoint = "{receiver.url}"
service_name = "gateway-under-test"
"""
    return make_gateway(
        directory, standard_routes(upstream.url, upstream.url), extra, env=FAST_EXPORT
    )


@pytest.fixture(scope="module")
def untrusted(tmp_path_factory, upstream, receiver) -> Iterator[Gateway]:
    gw = traced_gateway(tmp_path_factory.mktemp("traced"), upstream, receiver, trusted=False)
    yield gw
    gw.stop()


def parent_of(upstream: RecordingUpstream) -> tuple[str, str]:
    (value,) = upstream.last().header("traceparent")
    _, trace_id, span_id, _ = value.split("-")
    return trace_id, span_id


def test_one_request_is_one_trace_with_its_steps_and_the_upstream_continues_it(
    untrusted, upstream, receiver
):
    alice = untrusted.login("alice")
    upstream.clear()
    response = alice.get("/app/page")
    assert response.status_code == 200
    trace_id, parent_span = parent_of(upstream)
    spans = receiver.trace(trace_id, least=3)
    by_name = {s.name: s for s in spans}
    assert "authenticate" in by_name and "upstream" in by_name
    root = next(s for s in spans if not s.parent_span_id)
    assert root.name == "GET /app/page"
    # the upstream's parent is the gateway's upstream span
    assert by_name["upstream"].span_id.hex() == parent_span
    assert by_name["upstream"].parent_span_id == root.span_id
    assert by_name["authenticate"].parent_span_id == root.span_id
    attributes = {a.key: a.value for a in root.attributes}
    assert attributes["http.response.status_code"].int_value == 200
    assert attributes["enduser.id"].string_value == "alice"
    assert (
        attributes["gateway.request_id"].string_value == upstream.last().header("x-request-id")[0]
    )
    assert receiver.paths and set(receiver.paths) == {"/v1/traces"}


def test_sign_in_traces_the_users_source_and_the_store(untrusted, receiver, upstream):
    untrusted.login("bob")
    deadline = time.monotonic() + 10
    names: set[str] = set()
    while (
        time.monotonic() < deadline and not {"users.authenticate", "store.create_session"} <= names
    ):
        names = {s.name for s in receiver.spans}
        time.sleep(0.1)
    assert {"users.authenticate", "store.create_session"} <= names


def test_a_client_traceparent_from_an_untrusted_peer_starts_a_new_trace(
    untrusted, upstream, receiver
):
    alice = untrusted.login("alice")
    upstream.clear()
    alice.get("/app/page", headers={"traceparent": CLIENT_PARENT, "tracestate": "x=1"})
    trace_id, _ = parent_of(upstream)
    assert trace_id != CLIENT_TRACE
    assert upstream.last().header("tracestate") == []


def test_a_trusted_proxys_traceparent_is_continued(tmp_path, upstream, receiver):
    gw = traced_gateway(tmp_path, upstream, receiver, trusted=True)
    try:
        alice = gw.login("alice")
        upstream.clear()
        alice.get("/app/page", headers={"traceparent": CLIENT_PARENT})
        trace_id, _ = parent_of(upstream)
        assert trace_id == CLIENT_TRACE
        spans = receiver.trace(CLIENT_TRACE, least=2)
        root = next(s for s in spans if s.name == "GET /app/page")
        assert root.parent_span_id.hex() == "b7ad6b7169203331"
    finally:
        gw.stop()


def test_with_telemetry_off_nothing_is_exported_and_traceparent_passes_as_any_header(
    tmp_path, upstream, receiver
):
    gw = make_gateway(tmp_path, standard_routes(upstream.url, upstream.url), env=FAST_EXPORT)
    try:
        before = len(receiver.spans)
        alice = gw.login("alice")
        upstream.clear()
        alice.get("/app/page", headers={"traceparent": CLIENT_PARENT})
        assert upstream.last().header("traceparent") == [CLIENT_PARENT]
        time.sleep(0.5)
        assert len(receiver.spans) == before
        assert "opentelemetry" not in gw.logs()
    finally:
        gw.stop()
