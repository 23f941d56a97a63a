"""The pure pieces around a decision: what is done with it, which headers cross, what a
tunnel may carry. No mitmproxy, no sockets."""

from __future__ import annotations

import pytest

from crawlguard.policy.decisions import Action, Decision, Kind
from crawlguard.policy.headers import strip_request, strip_response
from crawlguard.policy.plan import plan
from crawlguard.proxy.compat import decision_for_error
from crawlguard.proxy.sniff import FirstBytes, classify, leading_empty_lines

ROBOTS = Decision(Kind.ROBOTS_DISALLOW, rule="Disallow: /private")
FORBIDDEN = Decision(Kind.DESTINATION_FORBIDDEN, rule="destinations")
INVALID = Decision(Kind.REQUEST_INVALID, rule="canonical request")
OK = Decision(Kind.ALLOWED)


@pytest.mark.parametrize(
    ("mode", "decision", "record", "refuse"),
    [
        ("enforce", OK, None, False),
        ("enforce", ROBOTS, Action.BLOCKED, True),
        ("monitor", ROBOTS, Action.LOGGED, False),
        ("off", ROBOTS, None, False),
        # never an open proxy, in any mode
        ("enforce", FORBIDDEN, Action.BLOCKED, True),
        ("monitor", FORBIDDEN, Action.BLOCKED, True),
        ("off", FORBIDDEN, None, True),
        ("monitor", INVALID, Action.BLOCKED, True),
        ("off", INVALID, None, True),
    ],
)
def test_plan_by_mode_and_kind(mode: str, decision: Decision, record: Action | None, refuse: bool):
    step = plan(mode, decision)
    assert (step.record, step.refuse, step.hold) == (record, refuse, False)


def test_plan_hold_is_recorded_as_delayed_and_forwarded():
    step = plan("enforce", Decision(Kind.CRAWL_DELAY, delay_seconds=1.5), held=True)
    assert (step.record, step.refuse, step.hold) == (Action.DELAYED, False, True)


def test_request_headers_hop_by_hop_proxy_and_ours_are_removed():
    headers = {
        "Host": "a.example",
        "User-Agent": "AcmeBot/1.0",
        "Proxy-Authorization": "Basic eA==",
        "Proxy-Connection": "keep-alive",
        "Connection": "X-Secret, keep-alive",
        "X-Secret": "1",
        "Keep-Alive": "timeout=5",
        "Upgrade": "websocket",
        "Via": "1.1 forged",
        "TE": "trailers",
        "X-Crawlguard-Decision": "allowed",
        "x-crawlguard-delayed": "0",
        "Accept": "*/*",
    }
    strip_request(headers)
    assert headers == {"Host": "a.example", "User-Agent": "AcmeBot/1.0", "Accept": "*/*"}


def test_connection_close_is_kept():
    headers = {"Connection": "close", "Accept": "*/*"}
    strip_request(headers)
    assert headers == {"Connection": "close", "Accept": "*/*"}


def test_response_headers_lose_origin_forgeries_of_ours():
    headers = {
        "Content-Type": "text/html",
        "X-Crawlguard-Monitor": "robots-disallow",
        "X-Crawlguard-Delayed": "9",
        "X-CrawlGuard-Decision": "allowed",
        "Proxy-Authenticate": 'Basic realm="x"',
        "Keep-Alive": "timeout=5",
        "Transfer-Encoding": "chunked",  # framing is mitmproxy's, kept
    }
    strip_response(headers)
    assert headers == {"Content-Type": "text/html", "Transfer-Encoding": "chunked"}


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", FirstBytes.MORE),
        (b"GE", FirstBytes.MORE),
        (b"GET /private/ HT", FirstBytes.MORE),
        (b"GET /private/ HTTP/1.1\r\nHost: x\r\n\r\n", FirstBytes.HTTP),
        (b"\r\n\r\nGET / HTTP/1.1\r\n", FirstBytes.HTTP),
        (b"\nGET / HTTP/1.0\n", FirstBytes.HTTP),
        (b"\x16\x03\x01\x02\x00", FirstBytes.TLS),
        (b"SSH-2.0-OpenSSH_9.6\r\n", FirstBytes.OTHER),
        (b"\x00\x01\x02", FirstBytes.OTHER),
        (b"GET /private/\r\n", FirstBytes.OTHER),  # HTTP/0.9: no version, no headers
        (b"A" * 17000, FirstBytes.OTHER),
        (b"hello world\r\n", FirstBytes.OTHER),
    ],
)
def test_first_bytes_in_a_tunnel(data: bytes, kind: FirstBytes):
    assert classify(data) is kind


def test_leading_empty_lines():
    assert leading_empty_lines(b"\r\n\nGET") == 3
    assert leading_empty_lines(b"GET") == 0


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        (400, "Bad request line", "request-invalid"),
        (
            502,
            "Connection killed: crawlguard: ('10.0.0.1', 80) was not decided",
            "destination-forbidden",
        ),
        (502, "Connection refused", "allowed"),
    ],
)
def test_engine_error_responses_name_a_decision(status: int, message: str, kind: str):
    assert decision_for_error(status, message) == kind
