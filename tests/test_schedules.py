"""Schedules (`[[schedules]]`): each slot fires once, across restarts, downtimes and DST.

Time is injected: the in-process service runs on `Clock(wall)` with a wall clock the test
moves, then calls `Schedules.run_once()` (what the task does when it wakes), so no test waits
for a minute to pass. The restart test runs a real `offload serve` on the real clock, with a
yearly schedule whose latest slot is long past: it fires at start (catch-up), and must not
fire again after a crash and a restart."""
from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from offload.service.app import create_app
from offload.service.config import Config, ConfigError, ScheduleConfig, load_config, validate
from offload.service.keys import SCHEDULES
from offload.service.models import Clock
from offload.service.schedules import LATE_MS, Schedules, due, parse_cron
from offload.service.store.sqlite import SQLiteStore
from tests.conftest import wait_status
from tests.conftest import both_backends as store_backend  # noqa: F401  (each test on SQLite and on PostgreSQL)
from tests.server_process import ServerProcess, all_jobs

pytestmark = pytest.mark.timeout(90)


def ms(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp).timestamp() * 1000)


def iso(stamp: str) -> str:
    """`2026-06-01T06:00:00Z` as the service writes it (milliseconds, `Z`)."""
    return stamp.replace("Z", ".000Z")


class Wall:
    """A wall clock the test sets; the service's `Clock` follows it forward."""

    def __init__(self, at: str) -> None:
        self.ms = ms(at)

    def __call__(self) -> int:
        return self.ms

    def move(self, to: str) -> None:
        assert ms(to) >= self.ms, "the tests only move the clock forward"
        self.ms = ms(to)


def schedule(name: str, cron: str, **keys: Any) -> ScheduleConfig:
    return ScheduleConfig(name=name, cron=cron, type="test.echo", data={"from": name}, **keys)


@asynccontextmanager
async def service(config: Config, wall: Wall) -> AsyncIterator[tuple[TestClient, Schedules]]:
    app = create_app(config, clock=Clock(wall))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client, app[SCHEDULES]


async def jobs_from(client: TestClient) -> list[dict[str, Any]]:
    """The jobs the schedules submitted (every test.echo job here), oldest first."""
    body = await (await client.get("/api/jobs", params={"limit": "200", "type": "test.echo"})).json()
    return list(reversed(body["jobs"]))


async def listed(client: TestClient) -> dict[str, dict[str, Any]]:
    response = await client.get("/api/schedules")
    assert response.status == 200, await response.text()
    return {entry["name"]: entry for entry in (await response.json())["schedules"]}


def config_with(make_config: Any, *schedules: ScheduleConfig) -> Config:
    return make_config(workers={"processes": 1}).replace(schedules=schedules)


# ---- the rule, without a service -----------------------------------------------------------------
def test_due_runs_the_latest_slot_once_and_sorts_late_slots_by_catch_up() -> None:
    cron = parse_cron("0 6 * * *", "UTC")
    six = ms("2026-06-01T06:00:00Z")
    assert due(cron, "one", None, six + 5) == due(cron, "skip", None, six + 5)  # new: starts from now
    assert due(cron, "one", None, six + 5).run is False  # type: ignore[union-attr]
    assert due(cron, "one", six, six + 5) is None  # recorded already
    assert due(cron, "skip", six - 86_400_000, six + 5).run is True  # on time, whatever catch_up says
    three_days_late = six + 3 * 86_400_000 + LATE_MS + 1
    for catch_up, runs in (("one", True), ("skip", False)):
        todo = due(cron, catch_up, six - 86_400_000, three_days_late)
        assert todo is not None and todo.slot == six + 3 * 86_400_000 and todo.run is runs  # only the latest


def test_cron_follows_berlin_wall_time_across_both_dst_changes() -> None:
    six = parse_cron("0 6 * * *", "Europe/Berlin")
    assert six.next_after(ms("2026-03-28T05:00:00Z")) == ms("2026-03-29T04:00:00Z")  # 06:00 CET, then CEST
    half_past_two = parse_cron("30 2 * * *", "Europe/Berlin")
    # spring forward: 02:30 does not exist on 29 March; it runs at 03:00 CEST (01:00Z), once
    assert half_past_two.next_after(ms("2026-03-28T23:00:00Z")) == ms("2026-03-29T01:00:00Z")
    # fall back: 02:30 happens twice on 25 October; it runs at the first, once
    first = half_past_two.next_after(ms("2026-10-24T22:00:00Z"))
    assert first == ms("2026-10-25T00:30:00Z")
    assert half_past_two.next_after(first) == ms("2026-10-26T01:30:00Z")
    inside_the_second_pass = ms("2026-10-25T01:15:00Z")  # 02:15 CET, after 02:30 CEST
    assert half_past_two.latest_until(inside_the_second_pass) == first


# ---- firing, in process, on an injected clock ------------------------------------------------------
async def test_a_schedule_fires_once_per_slot_and_lists_its_next_run(make_config: Any) -> None:
    wall = Wall("2026-06-01T05:59:00Z")
    async with service(config_with(make_config, schedule("daily", "0 6 * * *")), wall) as (client, schedules):
        entry = (await listed(client))["daily"]
        # a new schedule starts from the next slot: the one before it is recorded as passed over
        assert (entry["nextRunAt"], entry["lastSlot"], entry["lastJobId"]) == (
            iso("2026-06-01T06:00:00Z"), iso("2026-05-31T06:00:00Z"), None)
        assert await jobs_from(client) == []

        wall.move("2026-06-01T06:00:00.200Z")
        await schedules.run_once()
        await schedules.run_once()  # the same slot again: nothing
        wall.move("2026-06-01T06:00:40Z")
        await schedules.run_once()
        (job,) = await jobs_from(client)
        done = await wait_status(client, job["id"], "completed")
        assert done["result"] == {"value": {"from": "daily"}}
        entry = (await listed(client))["daily"]
        assert (entry["lastSlot"], entry["lastJobId"], entry["nextRunAt"]) == (
            iso("2026-06-01T06:00:00Z"), job["id"], iso("2026-06-02T06:00:00Z"))
        assert entry["user"] == "local" and entry["timezone"] == "UTC"

        wall.move("2026-06-02T06:00:01Z")
        await schedules.run_once()
        assert len(await jobs_from(client)) == 2


@pytest.mark.parametrize("catch_up, runs", [("one", True), ("skip", False)])
async def test_slots_missed_during_a_downtime_run_once_or_are_skipped(make_config: Any, catch_up: str,
                                                                      runs: bool) -> None:
    config = config_with(make_config, schedule("daily", "0 6 * * *", catch_up=catch_up))
    wall = Wall("2026-06-01T05:00:00Z")
    async with service(config, wall) as (client, _):
        assert await jobs_from(client) == []
    wall.move("2026-06-03T09:00:00Z")  # down for three 06:00 slots
    async with service(config, wall) as (client, schedules):
        await schedules.run_once()  # the start-up dealt with them already: nothing more
        jobs = await jobs_from(client)
        entry = (await listed(client))["daily"]
        assert entry["lastSlot"] == iso("2026-06-03T06:00:00Z")  # the latest missed slot, and only it
        assert entry["nextRunAt"] == iso("2026-06-04T06:00:00Z")
        if runs:
            (job,) = jobs
            assert entry["lastJobId"] == job["id"]
        else:
            assert jobs == [] and entry["lastJobId"] is None
        wall.move("2026-06-04T06:00:00.100Z")  # the next slot runs on time either way
        await schedules.run_once()
        assert len(await jobs_from(client)) == len(jobs) + 1


async def test_berlin_schedules_fire_at_local_time_across_dst(make_config: Any) -> None:
    # catch_up "skip": the jump from March to October passes over the slots between, unrun
    config = config_with(make_config, schedule("six", "0 6 * * *", timezone="Europe/Berlin", catch_up="skip"),
                         schedule("half-past-two", "30 2 * * *", timezone="Europe/Berlin", catch_up="skip"))
    wall = Wall("2026-03-28T04:30:00Z")
    fired: list[tuple[str, int]] = []

    async def at(stamp: str) -> None:
        wall.move(stamp)
        fired.extend((r.schedule, r.slot) for r in await schedules.run_once() if r.job_id is not None)

    utc = ms

    async with service(config, wall) as (client, schedules):
        await at("2026-03-28T05:00:00.300Z")  # 06:00 CET
        await at("2026-03-29T00:59:59Z")  # 01:59:59 CET, just before the clocks go forward
        await at("2026-03-29T01:00:00.300Z")  # 03:00 CEST: 02:30 never happened, it runs now
        await at("2026-03-29T03:59:30Z")  # 05:59:30 CEST: not yet six
        await at("2026-03-29T04:00:00.300Z")  # 06:00 CEST
        await at("2026-10-24T23:00:00Z")  # 01:00 CEST, a quiet night in October
        await at("2026-10-25T00:30:00.300Z")  # 02:30 CEST, the first of two
        await at("2026-10-25T01:30:00.300Z")  # 02:30 CET, the same wall time again: no second run
        await at("2026-10-25T05:00:00.300Z")  # 06:00 CET
        assert fired == [("six", utc("2026-03-28T05:00:00Z")), ("half-past-two", utc("2026-03-29T01:00:00Z")),
                         ("six", utc("2026-03-29T04:00:00Z")), ("half-past-two", utc("2026-10-25T00:30:00Z")),
                         ("six", utc("2026-10-25T05:00:00Z"))]
        entry = (await listed(client))["six"]
        assert entry["nextRunAt"] == iso("2026-10-26T05:00:00Z") and entry["timezone"] == "Europe/Berlin"


# ---- a real server, restarted -------------------------------------------------------------------------
YEARLY = '\n[[schedules]]\nname = "yearly"\ncron = "0 0 1 1 *"\ntype = "test.echo"\ndata = {from = "yearly"}\n'


async def test_a_slot_fired_before_a_crash_is_not_fired_again_after_the_restart(tmp_path: Any) -> None:
    with ServerProcess(tmp_path / "server", processes=1) as server:
        server.config.write_text(server.config.read_text() + YEARLY)
        # as if an earlier run had fired the slot a year before the latest one
        store = SQLiteStore(server.db)
        await store.open()
        latest = parse_cron("0 0 1 1 *", "UTC").latest_until(Clock().now())
        assert latest is not None
        previous = parse_cron("0 0 1 1 *", "UTC").latest_until(latest - 1)
        assert previous is not None and await store.fire_slot("yearly", previous, None) == (None, False)
        await store.close()

        await server.start()  # the latest slot was missed: catch_up "one" runs it once, before serving
        async with server.session() as http:
            async with http.get("/api/schedules") as response:
                (entry,) = (await response.json())["schedules"]
            first = entry["lastJobId"]
            assert first is not None and entry["lastSlot"] == _iso_ms(latest)
        server.kill()  # a crash, right after the slot fired

        await server.start()
        async with server.session() as http:
            async with http.get("/api/schedules") as response:
                (entry,) = (await response.json())["schedules"]
            assert (entry["lastSlot"], entry["lastJobId"]) == (_iso_ms(latest), first)
            jobs = await all_jobs(http)
            assert [job_id for job_id, job in jobs.items() if job["type"] == "test.echo"] == [first]
        assert server.stop() == 0
        assert "slot" in server.tail(200)


def _iso_ms(moment: int) -> str:
    from offload.service.models import iso as service_iso

    text = service_iso(moment)
    assert text is not None
    return text


# ---- a bad schedule stops start-up, naming it and the field ---------------------------------------------
@pytest.mark.parametrize("lines, message", [
    ('cron = "61 6 * * *"', "[[schedules]] 'nightly': cron: '61 6 * * *': bad minute field"),
    ('cron = "0 6 * *"', "[[schedules]] 'nightly': cron: '0 6 * *' has 4 fields"),
    ('cron = "0 6 * * *"\ntimezone = "Europe/Berlinn"', "[[schedules]] 'nightly': timezone: unknown time zone"),
    ('cron = "0 6 * * *"\ncatch_up = "all"', "[[schedules]] 'nightly': catch_up: must be \"one\""),
    ('cron = "0 6 * * *"\nevery = "day"', "[[schedules]] 'nightly': unknown key 'every'"),
    ('cron = "0 6 * * *"\nuser = "alice"', "[[schedules]] 'nightly': user: single-user mode"),
    ('', "[[schedules]] 'nightly': cron: is required"),
])
def test_a_bad_schedule_stops_the_configuration_naming_it_and_the_field(tmp_path: Any, lines: str,
                                                                          message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[[schedules]]\nname = "nightly"\ntype = "pdf"\n{lines}\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert message in str(caught.value)


@pytest.mark.parametrize("changes, message", [
    ({"type": "no.such.type"}, "[[schedules]] 'nightly': type: unknown job type 'no.such.type'"),
    ({"type": "pdf", "data": {"order": {}}}, "[[schedules]] 'nightly': data."),
    ({"options": {"priority": "urgent"}}, "[[schedules]] 'nightly': options.priority: must be one of"),
    ({"options": {"runAt": "2026-01-01T00:00:00Z"}}, "[[schedules]] 'nightly': options.runAt: "),
])
def test_a_schedule_its_job_type_refuses_stops_start_up(make_config: Any, changes: dict[str, Any],
                                                        message: str) -> None:
    config = config_with(make_config, dataclasses.replace(schedule("nightly", "0 6 * * *"), **changes))
    with pytest.raises(ConfigError) as caught:
        create_app(config)
    assert message in str(caught.value)


async def test_a_slot_whose_key_a_user_took_by_hand_is_passed_over_not_retried(make_config: Any) -> None:
    wall = Wall("2026-06-01T05:59:00Z")
    async with service(config_with(make_config, schedule("daily", "0 6 * * *")), wall) as (client, schedules):
        response = await client.post("/api/jobs", json={"type": "test.echo", "data": {"by": "hand"}, "options": {
            "idempotencyKey": "schedule:daily:2026-06-01T06:00:00.000Z"}})
        assert response.status == 201
        wall.move("2026-06-01T06:00:00.100Z")
        (record,) = await schedules.run_once()
        assert (record.slot, record.job_id) == (ms("2026-06-01T06:00:00Z"), None)
        assert await schedules.run_once() == []


async def test_the_page_lists_the_schedules_in_a_real_browser(make_config: Any, tmp_path: Any) -> None:
    from playwright.async_api import expect

    from tests.browser import Tab, chromium

    wall = Wall("2026-06-01T05:59:00Z")
    config = config_with(make_config, schedule("daily", "0 6 * * *", timezone="Europe/Berlin"))
    async with service(config, wall) as (client, _), chromium() as browser:
        tab = Tab(await browser.new_page())
        await tab.page.goto(f"http://127.0.0.1:{client.port}/")
        row = tab.page.locator("#schedule-rows tr").first
        await expect(row).to_contain_text("daily", timeout=20_000)
        await expect(row).to_contain_text("0 6 * * * (Europe/Berlin)")
        await expect(row).to_contain_text("passed over")
        assert await tab.page.locator("#schedules").is_visible()
        await tab.page.screenshot(path=str(tmp_path / "schedules.png"), full_page=True)
        assert not [line for line in tab.console if line.startswith(("error", "pageerror"))], tab.console


async def test_operators_see_every_schedule_and_users_their_own(make_config: Any) -> None:
    tokens = {"alice-token-0123456789": "alice", "bob-token-0123456789ab": "bob", "carol-token-0123456789": "carol"}
    config = make_config(workers={"processes": 1}, auth={"tokens": tokens, "admins": ("alice",)}).replace(
        schedules=(schedule("bobs", "0 6 * * *", user="bob"), schedule("carols", "0 7 * * *", user="carol")))
    async with service(config, Wall("2026-06-01T05:59:00Z")) as (client, _):
        async def names(token: str) -> list[str]:
            response = await client.get("/api/schedules", headers={"Authorization": f"Bearer {token}"})
            return [entry["name"] for entry in (await response.json())["schedules"]]

        assert await names("alice-token-0123456789") == ["bobs", "carols"]
        assert await names("bob-token-0123456789ab") == ["bobs"]
        assert await names("carol-token-0123456789") == ["carols"]
        assert (await client.get("/api/schedules")).status == 401


def test_a_schedule_needs_a_user_with_a_token_once_tokens_are_configured(make_config: Any) -> None:
    tokens = {"alice-token-0123456789": "alice"}
    for user, message in (("", "user: is required when [auth] tokens are configured"),
                          ("mallory", "user: no token is configured for 'mallory'")):
        with pytest.raises(ConfigError) as caught:
            validate(make_config(auth={"tokens": tokens}).replace(schedules=(schedule("s", "0 6 * * *", user=user),)))
        assert f"[[schedules]] 's': {message}" in str(caught.value)
