"""Answers injected into a botocore client just before a request leaves it,
where botocore's retry handler sees them as the service's own: the way to test
the retries a real client makes (botocore's Stubber answers before that handler
runs)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from botocore.awsrequest import AWSResponse


def error_body(code: str, message: str = "Rate exceeded") -> bytes:
    """An AWS query-protocol error response."""
    return (
        "<ErrorResponse><Error><Type>Sender</Type>"
        f"<Code>{code}</Code><Message>{message}</Message>"
        "</Error><RequestId>r</RequestId></ErrorResponse>"
    ).encode()


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_kw: Any) -> Iterator[bytes]:
        yield self.body


def answer(
    client: Any, event: str, answers: list[tuple[int, bytes]], *, repeat_last: bool = False
) -> list[str]:
    """Answer the attempts of ``event`` (``service.Operation``, e.g.
    ``auto-scaling.SetDesiredCapacity``) with ``answers`` (HTTP status, body),
    in order. Past them, later attempts are sent to the endpoint, or answered
    with the last answer again when ``repeat_last``. Returns the body of every
    attempt made."""
    seen: list[str] = []

    def handler(request: Any, **_kw: Any) -> AWSResponse | None:
        body = request.body
        seen.append(body.decode() if isinstance(body, bytes) else str(body))
        if len(seen) > len(answers) and not repeat_last:
            return None
        status, data = answers[min(len(seen), len(answers)) - 1]
        headers: Any = {"Content-Type": "text/xml"}
        return AWSResponse(request.url, status, headers, _Raw(data))

    client.meta.events.register(f"before-send.{event}", handler)
    return seen
