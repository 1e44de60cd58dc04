"""The `email` job type end to end: a real service sending to a real SMTP server (aiosmtpd)
that the test starts on a loopback port, on the test's own loop."""
from __future__ import annotations

import asyncio
import email
import email.policy
import time
import warnings
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from offload.workers.email_rate import TokenBucket
from tests.conftest import eventually, submit, wait_status

SENDER = "shop@example.com"


class Mailbox:
    """The test's SMTP server's handler: keeps every message it accepted, with its envelope.
    `refuse[address]` is the answer to RCPT for that address; `drop_after` closes the
    connection at the MAIL after that many messages (once)."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], email.message.EmailMessage, float]] = []
        self.refuse: dict[str, str] = {}
        self.drop_after: int | None = None
        self.port = 0
        self.connections: list[SMTP] = []

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        if self.drop_after is not None and len(self.messages) >= self.drop_after:
            self.drop_after = None
            assert server.transport is not None
            server.transport.abort()  # the connection drops mid-batch, without a word
            return "421 gone"
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((list(envelope.rcpt_tos), parsed, time.monotonic()))  # type: ignore[arg-type]
        return "250 Message accepted"

    def received_by(self, address: str) -> list[email.message.EmailMessage]:
        return [message for rcpts, message, _ in self.messages if address in rcpts]


async def serve_smtp(box: Mailbox, **options: Any) -> asyncio.Server:
    loop = asyncio.get_running_loop()

    def connection() -> SMTP:
        with warnings.catch_warnings():  # AUTH without TLS, on loopback, is what the login test wants
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS", UserWarning)
            protocol = SMTP(box, hostname="mx.test", loop=loop, **options)
        box.connections.append(protocol)
        return protocol

    server = await loop.create_server(connection, "127.0.0.1", 0)
    box.port = server.sockets[0].getsockname()[1]
    return server


async def stop_smtp(box: Mailbox, server: asyncio.Server) -> None:
    """Close the server and every connection it still has (`wait_closed` waits for them)."""
    server.close()
    for protocol in box.connections:
        if protocol.transport is not None:
            protocol.transport.abort()
    await server.wait_closed()


@pytest.fixture
async def mailbox() -> AsyncIterator[Mailbox]:
    box = Mailbox()
    server = await serve_smtp(box)
    yield box
    await stop_smtp(box, server)


def email_settings(box: Mailbox, **more: Any) -> dict[str, Any]:
    return {"jobs": {"settings": {"email": {"host": "127.0.0.1", "port": box.port, "from": SENDER, "rate": 0,
                                            "timeout_s": 10, **more}},
                     "results_dir": None, "retry_delay_ms": 10}}


@pytest.fixture
def email_config(make_config):
    def make(box: Mailbox, **more: Any) -> Any:
        base = make_config()
        settings = email_settings(box, **more)["jobs"]["settings"]
        return base.replace(jobs={"settings": {**base.jobs.settings, **settings}, "retry_delay_ms": 10})

    return make


async def test_each_recipient_gets_their_own_message_with_their_placeholders(start_server, email_config, mailbox):
    client = await start_server(email_config(mailbox))
    job_id = await submit(client, "email", {
        "to": ["plain@example.com",
               {"address": "ada@example.com", "name": "Ada Lovelace", "vars": {"code": "<b>&", "total": 12.5}},
               {"address": "alan@example.com", "name": "Alan", "vars": {"code": "A-2"}}],
        "subject": "Hello {name}, order {order}",
        "text": "Code {code}, total {total}. {unknown} stays.",
        "html": "<p>{code}</p><style>p {color: red}</style>",
        "vars": {"order": "1001", "code": "none", "total": "0"},
        "replyTo": {"address": "help@example.com", "name": "Help"},
    })
    job = await wait_status(client, job_id, "completed", "failed")
    assert job["status"] == "completed", job
    assert job["result"] == {"value": {"sent": ["plain@example.com", "ada@example.com", "alan@example.com"],
                                       "refused": {}}}
    assert job["progress"] == 100 and job["message"] == "3 of 3 sent"
    assert "checkpoint" not in job
    assert [rcpts for rcpts, _, _ in mailbox.messages] == [["plain@example.com"], ["ada@example.com"],
                                                            ["alan@example.com"]]
    plain, ada, alan = (m for _, m, _ in mailbox.messages)
    assert ada["Subject"] == "Hello Ada Lovelace, order 1001"
    assert plain["Subject"] == "Hello , order 1001"
    assert ada["To"] == "Ada Lovelace <ada@example.com>" and ada["From"] == SENDER
    assert ada["Reply-To"] == "Help <help@example.com>"
    assert ada.get_body(("plain",)).get_content().strip() == "Code <b>&, total 12.5. {unknown} stays."
    assert alan.get_body(("plain",)).get_content().strip() == "Code A-2, total 0. {unknown} stays."
    assert ada.get_body(("html",)).get_content().strip() == "<p>&lt;b&gt;&amp;</p><style>p {color: red}</style>"
    ids = {m["Message-ID"] for _, m, _ in mailbox.messages}
    assert ids == {f"<{job_id}.{i}@example.com>" for i in range(3)}


async def test_a_refused_recipient_is_recorded_and_the_others_get_theirs(start_server, email_config, mailbox):
    mailbox.refuse["nobody@example.com"] = "550 5.1.1 no such user"
    client = await start_server(email_config(mailbox))
    job_id = await submit(client, "email", {"to": ["a@example.com", "nobody@example.com", "b@example.com"],
                                            "subject": "s", "text": "t"})
    job = await wait_status(client, job_id, "completed", "failed")
    assert job["status"] == "completed" and job["attempts"] == 1, job
    assert job["result"]["value"] == {"sent": ["a@example.com", "b@example.com"],
                                      "refused": {"nobody@example.com": "550 5.1.1 no such user"}}
    assert job["message"] == "2 of 3 sent, 1 refused"
    assert [rcpts for rcpts, _, _ in mailbox.messages] == [["a@example.com"], ["b@example.com"]]


async def test_a_dropped_connection_is_retried_and_sends_only_to_the_others(start_server, email_config, mailbox):
    mailbox.drop_after = 2
    addresses = [f"r{i}@example.com" for i in range(5)]
    client = await start_server(email_config(mailbox))
    job_id = await submit(client, "email", {"to": addresses, "subject": "s", "text": "t"}, maxRetries=2)
    job = await wait_status(client, job_id, "completed", "failed")
    assert job["status"] == "completed", job
    assert job["attempts"] == 2  # the first one ended with the connection
    assert job["result"]["value"] == {"sent": addresses, "refused": {}}
    for address in addresses:
        assert len(mailbox.received_by(address)) == 1, address


async def test_a_server_that_is_not_there_fails_the_attempt_as_retryable(start_server, email_config, mailbox):
    box = Mailbox()
    await stop_smtp(box, await serve_smtp(box))  # nobody listens on its port any more
    client = await start_server(email_config(box))
    job_id = await submit(client, "email", {"to": ["a@example.com"], "subject": "s", "text": "t"}, maxRetries=1)
    job = await wait_status(client, job_id, "failed")
    assert job["attempts"] == 2 and job["error"]["type"] == "SMTPConnectionError", job
    assert "0 of 1 sent so far" in job["error"]["message"]


async def test_the_rate_limit_is_shared_by_every_email_job_to_the_server(start_server, email_config, mailbox):
    client = await start_server(email_config(mailbox, rate=4, burst=1))
    jobs = [await submit(client, "email", {"to": [f"j{j}-{i}@example.com" for i in range(4)], "subject": "s",
                                           "text": "t"}) for j in range(2)]
    for job_id in jobs:
        assert (await wait_status(client, job_id, "completed", "failed"))["status"] == "completed"
    times = sorted(at for _, _, at in mailbox.messages)
    assert len(times) == 8
    # 4 a second after a burst of 1: at most 5 in any second, 6 with room for a late arrival.
    # Without the limit, or with a bucket per job, the 8 arrive within the same second.
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= 6, times


async def test_a_token_bucket_lets_through_rate_per_second_after_its_burst() -> None:
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    bucket = TokenBucket(4, 2, clock=lambda: now[0], sleep=sleep)
    for _ in range(2):  # the burst, at once
        await bucket.acquire()
    assert now[0] == 0
    for _ in range(8):  # then 4 a second
        await bucket.acquire()
    assert now[0] == pytest.approx(2.0)
    unlimited = TokenBucket(0, 1, clock=lambda: now[0], sleep=sleep)
    for _ in range(100):
        await unlimited.acquire()
    assert now[0] == pytest.approx(2.0)


async def test_a_login_uses_the_password_from_the_environment_and_never_shows_it(
        start_server, email_config, monkeypatch, mailbox):
    def authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"shop", b"pw-right-1")
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself

    box = Mailbox()
    server = await serve_smtp(box, authenticator=authenticate, auth_require_tls=False, auth_required=True)
    monkeypatch.setenv("OFFLOAD_TEST_SMTP_PASSWORD", "pw-right-1")
    client = await start_server(email_config(box, username="shop", password_env="OFFLOAD_TEST_SMTP_PASSWORD"))
    data = {"to": ["a@example.com"], "subject": "s", "text": "t"}
    job = await wait_status(client, await submit(client, "email", data), "completed", "failed")
    assert job["status"] == "completed" and len(box.received_by("a@example.com")) == 1, job
    monkeypatch.setenv("OFFLOAD_TEST_SMTP_PASSWORD", "pw-wrong-2")  # read again at each connection
    job = await wait_status(client, await submit(client, "email", data, maxRetries=3), "completed", "failed")
    assert job["status"] == "failed" and job["attempts"] == 1, job  # a refused login is not retried
    assert job["error"]["type"] == "SMTPLoginRefused" and "pw-wrong-2" not in str(job)
    await stop_smtp(box, server)


BAD = [
    ({"to": [], "subject": "s", "text": "t"}, "data.to"),
    ({"to": [f"r{i}@example.com" for i in range(4)], "subject": "s", "text": "t"}, "data.to"),
    ({"to": ["not an address"], "subject": "s", "text": "t"}, "data.to[0]"),
    ({"to": [{"address": "a@example.com", "name": "A\nBcc: x@y"}], "subject": "s", "text": "t"}, "data.to[0].name"),
    ({"to": [{"address": "a@example.com", "vars": {"x": {"deep": 1}}}], "subject": "s", "text": "t"},
     "data.to[0].vars.x"),
    ({"to": ["a@example.com"], "text": "t"}, "data.subject"),
    ({"to": ["a@example.com"], "subject": "s\r\nBcc: x@y", "text": "t"}, "data.subject"),
    ({"to": ["a@example.com"], "subject": "s"}, "data.text"),
    ({"to": ["a@example.com"], "subject": "s", "text": "x" * 101}, "data.text"),
    ({"to": ["a@example.com"], "subject": "s", "text": "t", "cc": ["b@example.com"]}, "data.cc"),
    ({"to": ["a@example.com"], "subject": "s", "text": "t", "from": "nope"}, "data.from"),
    ({"to": ["a@example.com"], "subject": "s", "text": "t", "attachments": [{"job": "invoice.pdf"}]},
     "data.attachments[0].job"),
    ({"to": ["a@example.com"], "subject": "s", "text": "t",
      "attachments": [{"job": "job_" + "a" * 24}] * 3}, "data.attachments"),
]


@pytest.mark.parametrize(("data", "field"), BAD)
async def test_bad_email_data_is_refused_with_422_naming_the_field(start_server, email_config, mailbox, data, field):
    client = await start_server(email_config(mailbox, max_recipients=3, max_body_length=100, max_attachments=2))
    response = await client.post("/api/jobs", json={"type": "email", "data": data})
    body = await response.json()
    assert response.status == 422, body
    assert body["error"]["message"].startswith(field + ":"), body
    assert (await (await client.get("/api/jobs")).json())["jobs"] == []


async def test_from_is_required_when_no_sender_is_configured(start_server, email_config, mailbox):
    client = await start_server(email_config(mailbox, **{"from": ""}))
    response = await client.post("/api/jobs", json={"type": "email", "data": {"to": ["a@example.com"],
                                                                              "subject": "s", "text": "t"}})
    assert response.status == 422 and (await response.json())["error"]["message"].startswith("data.from:")
    schema = (await (await client.get("/api/openapi.json")).json())
    assert "email" in str(schema)


async def test_the_progress_follows_the_recipients(start_server, email_config, mailbox):
    client = await start_server(email_config(mailbox))
    ws = await client.ws_connect("/api/ws")
    job_id = await submit(client, "email", {"to": [f"p{i}@example.com" for i in range(4)], "subject": "s",
                                            "text": "t"})
    await ws.send_json({"op": "subscribe", "jobId": job_id})
    seen: list[tuple[int, str]] = []

    async def finished() -> bool:
        event = await ws.receive_json()
        if event.get("event") == "progress":
            seen.append((event["progress"], event["message"]))
        return event.get("event") == "status" and event["status"] == "completed" or (
            event.get("event") == "snapshot" and event["job"]["status"] == "completed")

    await eventually(finished, what="the email to complete")
    await ws.close()
    assert seen and seen[-1][0] in (75, 100)  # progress may be coalesced; the last one is late
    assert all(message.endswith("of 4 sent") for _, message in seen)


async def test_an_email_after_an_invoice_attaches_its_pdf(start_server, email_config, mailbox):
    """The food-orders case: render the invoice, then mail it. The email names the invoice
    job as an attachment, so it waits for it (`needs`), and reads its file through ctx.inputs."""
    client = await start_server(email_config(mailbox))
    invoice = await submit(client, "pdf", {
        "type": "invoice", "order": {"number": "INV-7", "customer": {"name": "Ada"}},
        "items": [{"name": f"Item {i}", "quantity": 1, "unitPrice": 2.5} for i in range(300)]})
    mail = await submit(client, "email", {"to": ["ada@example.com"], "subject": "Your invoice",
                                          "text": "Attached.", "attachments": [{"job": invoice}]})
    job = await (await client.get(f"/api/jobs/{mail}")).json()
    assert job["after"] == [invoice], job
    done = await wait_status(client, mail, "completed", "failed", "cancelled")
    assert done["status"] == "completed" and done["result"]["value"]["sent"] == ["ada@example.com"], done
    rendered = await (await client.get(f"/api/jobs/{invoice}")).json()
    assert done["startedAt"] >= rendered["completedAt"]  # it waited for the invoice
    pdf = await (await client.get(f"/api/jobs/{invoice}/download")).read()
    (message,) = mailbox.received_by("ada@example.com")
    (attachment,) = list(message.iter_attachments())
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_filename() == "invoice-INV-7.pdf"
    assert attachment.get_content() == pdf and pdf.startswith(b"%PDF-")


async def test_an_email_whose_attachment_job_failed_is_cancelled_naming_it(start_server, email_config, mailbox):
    client = await start_server(email_config(mailbox))
    failing = await submit(client, "test.fail", {"permanent": True}, maxRetries=0)
    mail = await submit(client, "email", {"to": ["ada@example.com"], "subject": "Your invoice",
                                          "text": "Attached.", "attachments": [{"job": failing}]})
    done = await wait_status(client, mail, "completed", "failed", "cancelled")
    assert done["status"] == "cancelled" and done["error"]["type"] == "DependencyFailed", done
    assert failing in done["error"]["message"]
    assert mailbox.messages == []
