"""What the README promises, run as written."""

from __future__ import annotations

import re

import pytest

from tests.conftest import ROOT, Gateway
from tests.upstream import RecordingUpstream


def readme_block(heading: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split(heading, 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"no python block under {heading}"
    return match.group(1)


def test_the_assertion_example_verifies_a_real_assertion(
    gateway: Gateway, upstream: RecordingUpstream
):
    code = readme_block("### Verifying the assertion in an upstream")
    code = code.replace("http://127.0.0.1:8000", gateway.url)
    code = code.replace("http://localhost:8000", f"http://localhost:{gateway.port}")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    verified_user = namespace["verified_user"]

    client = gateway.login("alice")
    upstream.clear()
    assert client.get("/app/report?x=1").status_code == 200
    request = upstream.last()
    headers = {"X-Gateway-Assertion": request.header("x-gateway-assertion")[0]}
    assert verified_user(headers, "GET", "/app/report", route="app") == "alice"
    # not bound to the request by default: the same assertion serves the session's other ones
    assert verified_user(headers, "POST", "/app/other", route="app") == "alice"
    import jwt

    with pytest.raises(jwt.InvalidAudienceError):
        verified_user(headers, "GET", "/app/report", route="admin")
