"""static/offload.js, the browser client, in real headless Chromium against a real server:
REST calls, the one shared WebSocket, tickets, reconnects across a server restart."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.browser import HARNESS, Tab, chromium
from tests.conftest import invoice
from tests.server_process import ServerProcess
from tests.users import ALICE, TOKENS

#: Run in the harness page: the client as `window.offload`, and `record(target)`, a watch
#: that keeps every event it gets in `log[target]`.
SETUP = """async ({token}) => {
  const m = await import("/static/offload.js");
  window.m = m;
  window.offload = new m.Offload(token ? {token} : {});
  window.log = {};
  window.states = [];
  window.stops = {};
  offload.onConnection((state) => states.push(state));
  window.record = (target) => {
    log[target] = log[target] || [];
    stops[target] = offload.watch(target, (e) => log[target].push(e));
  };
  const statusOf = (e) => e.event === "snapshot" ? e.job.status : e.event === "status" ? e.status : null;
  const idOf = (e) => e.jobId ?? e.job?.id;
  // The last status `log[key]` told of job `id` ("" if none yet).
  window.statusIn = (key, id) => {
    const told = (log[key] || []).filter((e) => idOf(e) === id && statusOf(e));
    return told.length ? statusOf(told[told.length - 1]) : "";
  };
  window.caught = async (promise) => {
    try { await promise; return null; } catch (e) {
      return {name: e.name, isOffloadError: e instanceof m.OffloadError, code: e.code, status: e.status,
              message: e.message, retryAfter: e.retryAfter};
    }
  };
}"""
TERMINAL = ("completed", "failed", "cancelled")


async def open_harness(browser: Any, url: str, token: str | None = None) -> Tab:
    tab = Tab(await browser.new_page())
    await tab.harness(url)
    await tab.page.evaluate(SETUP, {"token": token})
    return tab


async def until_status(tab: Tab, key: str, job_id: str, *statuses: str, timeout: float = 30) -> str:
    return await tab.wait_for(f"[{', '.join(map(json.dumps, statuses))}].includes(statusIn({json.dumps(key)}, "
                              f"{json.dumps(job_id)})) && statusIn({json.dumps(key)}, {json.dumps(job_id)})",
                              timeout)


async def events(tab: Tab, key: str) -> list[dict[str, Any]]:
    return await tab.page.evaluate("(key) => log[key] || []", key)


def seqs(events: list[dict[str, Any]], job_id: str) -> list[int]:
    return [e["job"]["seq"] if e["event"] == "snapshot" else e["seq"]
            for e in events if e.get("jobId", e.get("job", {}).get("id")) == job_id]


# ---- REST and one job's events ----------------------------------------------------------------
async def test_submit_follow_progress_to_100_and_download_the_pdf(start_server):
    client = await start_server()
    async with chromium() as browser:
        tab = await open_harness(browser, str(client.make_url("")).rstrip("/"))
        await tab.page.evaluate("() => record('all')")  # first, so that it sees every event
        await tab.wait_for("offload.connection === 'live'")
        job_id = await tab.page.evaluate("async (data) => (await offload.submit('pdf', data, {priority: 'high'})).jobId",
                                         invoice(40))
        await tab.page.evaluate("(id) => record(id)", job_id)  # late: a snapshot, then what is newer
        assert await until_status(tab, "all", job_id, *TERMINAL) == "completed"
        assert await until_status(tab, job_id, job_id, *TERMINAL) == "completed"
        seen = [e for e in await events(tab, "all") if e.get("jobId", e.get("job", {}).get("id")) == job_id]
        late = await events(tab, job_id)
        pdf = await tab.page.evaluate("""async (id) => {
          const blob = await offload.download(id);
          const head = new Uint8Array(await blob.slice(0, 5).arrayBuffer());
          return {type: blob.type, size: blob.size, head: String.fromCharCode(...head)};
        }""", job_id)
        job = await tab.page.evaluate("(id) => offload.get(id)", job_id)
    assert late[0]["event"] == "snapshot" and seqs(late, job_id) == sorted(set(seqs(late, job_id)))
    progress = [e["progress"] for e in seen if e["event"] == "progress"]
    assert progress and progress == sorted(progress), progress  # live (maybe coalesced), in order
    assert seen[-1]["event"] == "status" and seen[-1]["job"]["progress"] == 100  # 100 with completed
    assert seqs(seen, job_id) == sorted(set(seqs(seen, job_id))), "an event came twice or out of order"
    assert pdf["head"] == "%PDF-" and pdf["type"] == "application/pdf" and pdf["size"] == job["result"]["size"]
    assert job["status"] == "completed" and job["id"] == job_id
    assert not tab.errors(), tab.console


async def test_progress_events_reach_100_while_the_job_runs(start_server, tmp_path: Path):
    # test.steps reports 25, 50, 75, 100 and then waits for its gate: the latest progress
    # (100) is told as an event even if the server coalesced the ones before it
    client = await start_server()
    hold, gate = tmp_path / "hold", tmp_path / "gate"
    async with chromium() as browser:
        tab = await open_harness(browser, str(client.make_url("")).rstrip("/"))
        job_id = await tab.page.evaluate("async (data) => (await offload.submit('test.steps', data)).jobId",
                                         {"n": 4, "hold": str(hold), "gate": str(gate)})
        await tab.page.evaluate("(id) => record(id)", job_id)
        await tab.wait_for(f"log[{json.dumps(job_id)}].length > 0")  # the snapshot: now it may go on
        hold.touch()
        await tab.wait_for(f"log[{json.dumps(job_id)}].some((e) => e.event === 'progress' && e.progress === 100)")
        assert await tab.page.evaluate(f"statusIn({json.dumps(job_id)}, {json.dumps(job_id)})") == "running"
        gate.touch()
        assert await until_status(tab, job_id, job_id, *TERMINAL) == "completed"
        seen = await events(tab, job_id)
    progress = [e["progress"] for e in seen if e["event"] == "progress"]
    assert progress == sorted(progress) and set(progress) <= {25, 50, 75, 100}, progress
    assert [e["message"] for e in seen if e.get("progress") == 100] == ["step 4 of 4"]


async def test_cancel_a_running_job(start_server, tmp_path: Path):
    client = await start_server()
    async with chromium() as browser:
        tab = await open_harness(browser, str(client.make_url("")).rstrip("/"))
        job_id = await tab.page.evaluate("async (hold) => (await offload.submit('test.steps', {n: 3, hold})).jobId",
                                         str(tmp_path / "never"))
        await tab.page.evaluate("(id) => record(id)", job_id)
        await until_status(tab, job_id, job_id, "running")
        answer = await tab.page.evaluate("(id) => offload.cancel(id)", job_id)
        # 200 cancelled, or 202 still stopping: either way the final status event follows
        assert answer["status"] == "cancelled" or answer.get("cancelRequested") is True, answer
        assert await until_status(tab, job_id, job_id, *TERMINAL) == "cancelled"
        again = await tab.page.evaluate("(id) => caught(offload.cancel(id))", job_id)
    assert again is not None and again["isOffloadError"] and again["status"] == 409 and again["code"] == "conflict"


async def test_list_one_page_and_iterate_every_page(start_server):
    client = await start_server()
    async with chromium() as browser:
        tab = await open_harness(browser, str(client.make_url("")).rstrip("/"))
        ids = await tab.page.evaluate("""async () => {
          const ids = [];
          for (let i = 0; i < 5; i++) ids.push((await offload.submit('test.echo', {i})).jobId);
          return ids;
        }""")
        listed = await tab.page.evaluate("""async () => {
          const page = await offload.list({limit: 2, type: 'test.echo'});
          const all = [];
          for await (const job of offload.jobs({limit: 2, type: 'test.echo'})) all.push(job.id);
          const none = await offload.list({type: 'pdf'});
          return {page: page.jobs.map((j) => j.id), next: page.nextCursor, all, none: none.jobs.length};
        }""")
    assert listed["page"] == ids[::-1][:2] and listed["next"]
    assert listed["all"] == ids[::-1]  # newest first, every page, no job twice
    assert listed["none"] == 0


async def test_errors_carry_the_contracts_code_status_and_retry_after(start_server):
    client = await start_server(limits={"max_pending_per_user": 1})
    async with chromium() as browser:
        tab = await open_harness(browser, str(client.make_url("")).rstrip("/"))
        result = await tab.page.evaluate("""async () => ({
          unknown: await caught(offload.get('job_doesnotexist')),
          invalid: await caught(offload.submit('no.such.type', {})),
          first: await caught(offload.submit('test.echo', {}, {delay: 60000})),
          limited: await caught(offload.submit('test.echo', {}, {delay: 60000})),
          early: await caught(offload.download((await offload.list({limit: 1})).jobs[0].id)),
        })""")
    assert result["unknown"] == {**result["unknown"], "name": "OffloadError", "isOffloadError": True,
                                 "code": "not_found", "status": 404, "retryAfter": None}
    assert result["invalid"]["status"] == 422 and result["invalid"]["code"] == "validation_error"
    assert "type" in result["invalid"]["message"]
    assert result["first"] is None
    assert result["limited"]["status"] == 429 and isinstance(result["limited"]["retryAfter"], int)
    assert result["limited"]["retryAfter"] >= 1
    assert result["early"]["status"] == 409


async def test_every_watch_shares_one_socket_and_the_last_unwatch_closes_it(start_server, tmp_path: Path):
    client = await start_server()
    async with chromium() as browser:
        tab = await open_harness(browser, str(client.make_url("")).rstrip("/"))
        gate = tmp_path / "gate"
        job_id = await tab.page.evaluate("async (gate) => (await offload.submit('test.steps', {n: 2, gate})).jobId",
                                         str(gate))
        await tab.page.evaluate("(id) => { record(id); record('all'); }", job_id)
        await until_status(tab, "all", job_id, "running")
        await until_status(tab, job_id, job_id, "running")
        # a second watch of "all" on the open socket still starts with a snapshot
        await tab.page.evaluate("() => { window.late = []; window.stopLate = offload.watch('all', (e) => late.push(e)); }")
        await tab.wait_for(f"late.some((e) => e.event === 'snapshot' && e.job.id === {json.dumps(job_id)})")
        gate.touch()
        await until_status(tab, "all", job_id, "completed")
        await until_status(tab, job_id, job_id, "completed")
        await tab.wait_for(f"late.some((e) => e.event === 'status' && e.status === 'completed' "
                           f"&& e.jobId === {json.dumps(job_id)})")
        assert len(tab.sockets) == 1, tab.sockets
        still = await tab.page.evaluate(f"() => {{ stops[{json.dumps(job_id)}](); stops.all(); return offload.connection; }}")
        closed = await tab.page.evaluate("() => { stopLate(); return offload.connection; }")
    assert still == "live" and closed == "closed"
    assert not tab.errors(), tab.console


# ---- tokens ---------------------------------------------------------------------------------
async def test_with_a_token_rest_sends_bearer_and_every_connect_uses_a_fresh_ticket(start_server):
    client = await start_server(**TOKENS)
    async with chromium() as browser:
        tab = await open_harness(browser, str(client.make_url("")).rstrip("/"), token=ALICE)
        await tab.page.evaluate("() => record('all')")
        await tab.wait_for("states.includes('live')")
        job_id = await tab.page.evaluate("async () => (await offload.submit('test.echo', {x: 1})).jobId")
        assert await until_status(tab, "all", job_id, *TERMINAL) == "completed"
        # a changed token reconnects: with a new ticket, since a ticket opens one socket only
        await tab.page.evaluate(f"() => offload.setToken({json.dumps(ALICE)})")
        await tab.wait_for("states.filter((s) => s === 'live').length >= 2")
        second = await tab.page.evaluate("async () => (await offload.submit('test.echo', {x: 2})).jobId")
        assert await until_status(tab, "all", second, *TERMINAL) == "completed"
        wrong = await open_harness(browser, str(client.make_url("")).rstrip("/"), token="not-a-token")
        refused = await wrong.page.evaluate("() => caught(offload.list())")
    assert len(tab.sockets) == 2, tab.sockets
    tickets = [url.partition("?ticket=")[2] for url in tab.sockets]
    assert all(tickets) and len(set(tickets)) == 2, tab.sockets
    assert not any(ALICE in url or "token=" in url for url in tab.sockets), tab.sockets
    api = [r for r in tab.requests if "/api/" in r.url and not r.url.endswith(HARNESS)]
    assert api and all(r.headers.get("authorization") == f"Bearer {ALICE}" for r in api)
    assert refused["status"] == 401 and refused["code"] == "unauthorized"
    assert not tab.errors(), tab.console


# ---- a server restart -------------------------------------------------------------------------
@pytest.mark.timeout(150)
async def test_the_page_reconnects_across_a_server_restart_and_shows_the_final_state(tmp_path: Path):
    """Three pages watch a job through a kill -9 and a restart of the server, while the
    job is run again: a watch of that job, the demo page, and a watch of "all" kept offline
    until the job has finished (`subscribe all` snapshots unfinished jobs only, so that one
    relies on the client subscribing again to the jobs it knew unfinished)."""
    gate = tmp_path / "gate"
    with ServerProcess(tmp_path / "server", processes=1, lease_ms=1500) as server:
        await server.start()
        async with chromium() as browser:
            away = await browser.new_context()  # its own context, to take it offline alone
            tab = await open_harness(away, server.url)
            frames: list[str] = []
            tab.page.on("websocket", lambda ws: ws.on("framesent", lambda payload: frames.append(
                f"{len(tab.sockets)} {payload}")))
            await tab.page.evaluate("() => record('all')")
            earlier = await tab.page.evaluate("async () => (await offload.submit('test.echo', {})).jobId")
            await tab.page.evaluate("(id) => record(id)", earlier)
            await until_status(tab, earlier, earlier, "completed")
            before_kill = await events(tab, earlier)
            job_id = await tab.page.evaluate("async (gate) => (await offload.submit('test.steps', {n: 4, gate})).jobId",
                                             str(gate))
            follower = await open_harness(browser, server.url)
            await follower.page.evaluate("(id) => record(id)", job_id)
            await follower.wait_for(f"log[{json.dumps(job_id)}].some((e) => (e.progress ?? e.job?.progress) === 100)")
            await until_status(tab, "all", job_id, "running")
            demo = Tab(await browser.new_page())
            await demo.page.goto(f"{server.url}/")
            row = demo.page.locator(f'#jobs li.job[data-id="{job_id}"]')
            await demo.wait_for(f"document.querySelector('#jobs li.job[data-id=\"{job_id}\"]')?.dataset.status "
                                "=== 'running' && document.querySelector('#conn').dataset.state === 'live'")

            server.kill()  # the running attempt dies with it; the job is run again after restart
            for page in (tab, follower):
                await page.wait_for("states[states.length - 1] === 'offline'")
            await demo.wait_for("document.querySelector('#conn').dataset.state === 'offline'")
            await away.set_offline(True)
            gate.touch()
            await server.start()
            assert await until_status(follower, job_id, job_id, *TERMINAL, timeout=60) == "completed"
            await demo.wait_for(f"document.querySelector('#jobs li.job[data-id=\"{job_id}\"]')?.dataset.status "
                                "=== 'completed'", timeout=60)
            assert await row.locator(".badge").text_content() == "completed"
            assert await row.locator(".job-attempts").text_content() == "attempts 2/4"
            assert await tab.page.evaluate("offload.connection") != "live"
            assert await tab.page.evaluate(f"statusIn('all', {json.dumps(job_id)})") == "running"
            await away.set_offline(False)
            assert await until_status(tab, "all", job_id, *TERMINAL, timeout=60) == "completed"
            one = await events(follower, job_id)
            everything = await events(tab, "all")
            before = await events(tab, earlier)
    assert len(follower.sockets) >= 2 and len(tab.sockets) >= 2, (follower.sockets, tab.sockets)
    final = [e for e in one if e.get("status") == "completed" or e.get("job", {}).get("status") == "completed"]
    assert len(final) == 1 and final[0]["job"]["attempts"] == 2, one
    for log, ident in ((one, job_id), (everything, job_id), (everything, earlier), (before, earlier)):
        numbers = seqs(log, ident)
        assert numbers == sorted(set(numbers)), f"an event of {ident} came twice or out of order: {numbers}"
    # the reconnect subscribed again (to the earlier, finished job too), yet told nothing twice
    resent = [f for f in frames if not f.startswith("1 ")]
    assert any(earlier in f for f in resent) and any(job_id in f for f in resent) \
        and any('"all":true' in f for f in resent), frames
    assert before == before_kill, before
    assert not [line for line in tab.console + follower.console + demo.console if line.startswith("pageerror")]


# ---- the React hook ---------------------------------------------------------------------------
#: React is not in the repository and no browser build of it comes with a Python package, so
#: the hook runs on a stand-in with React's semantics for the four hooks it uses: state that
#: re-renders when set (batched in a microtask), effects run after render when their deps
#: change (the previous cleanup first; every cleanup on unmount), refs, memoised callbacks.
STAND_IN_REACT = """async () => {
  const changed = (a, b) => !a || !b || a.length !== b.length || a.some((x, k) => !Object.is(x, b[k]));
  const hooks = [];
  let cursor = 0, effects = [], scheduled = false, unmounted = false, component = null;
  const schedule = () => { if (!scheduled) { scheduled = true; queueMicrotask(render); } };
  const React = {
    useState(initial) {
      const k = cursor++;
      if (!hooks[k]) {
        const h = hooks[k] = {value: initial};
        h.set = (v) => { const next = typeof v === "function" ? v(h.value) : v;
                         if (!Object.is(next, h.value)) { h.value = next; schedule(); } };
      }
      return [hooks[k].value, hooks[k].set];
    },
    useRef(initial) { const k = cursor++; return hooks[k] ??= {current: initial}; },
    useCallback(fn, deps) {
      const k = cursor++;
      if (!hooks[k] || changed(hooks[k].deps, deps)) hooks[k] = {fn, deps};
      return hooks[k].fn;
    },
    useEffect(fn, deps) {
      const k = cursor++;
      const h = hooks[k];
      if (h && !changed(h.deps, deps)) return;
      hooks[k] = {deps, cleanup: h?.cleanup};
      effects.push(() => { hooks[k].cleanup?.(); const c = fn(); hooks[k].cleanup = typeof c === "function" ? c : null; });
    },
  };
  function render() {
    scheduled = false;
    if (unmounted) return;
    cursor = 0; effects = [];
    component();
    for (const run of effects) run();
  }
  const {createUseBackgroundJob} = await import("/static/offload-react.js");
  const useBackgroundJob = createUseBackgroundJob(React, offload);
  window.renders = [];
  component = () => { window.hook = useBackgroundJob(); renders.push({status: hook.status, progress: hook.progress}); };
  render();
  window.unmount = () => { unmounted = true; for (const h of hooks) h?.cleanup?.(); };
}"""


async def test_use_background_job_creates_follows_downloads_and_cancels(start_server, tmp_path: Path):
    client = await start_server()
    async with chromium() as browser:
        tab = await open_harness(browser, str(client.make_url("")).rstrip("/"))
        await tab.page.evaluate(STAND_IN_REACT)
        assert await tab.page.evaluate("[hook.status, hook.progress, hook.job, hook.error]") == ["idle", 0, None, None]

        hold, gate = tmp_path / "hold", tmp_path / "gate"
        job_id = await tab.page.evaluate("(data) => hook.createJob('test.steps', data)",
                                         {"n": 4, "hold": str(hold), "gate": str(gate)})
        await tab.wait_for("hook.job !== null")  # following it: let it go on
        hold.touch()
        await tab.wait_for("hook.status === 'running' && hook.progress === 100")  # live, before the end
        gate.touch()
        await tab.wait_for("hook.status === 'completed' && hook.progress === 100")
        renders = await tab.page.evaluate("renders")
        assert await tab.page.evaluate("hook.job.id") == job_id and await tab.page.evaluate("hook.error") is None

        await tab.page.evaluate("(data) => hook.createJob('pdf', data)", invoice(60))
        await tab.wait_for("hook.status === 'completed' && hook.job.type === 'pdf'")
        async with tab.page.expect_download() as saved:
            size = await tab.page.evaluate("async () => (await hook.download()).size")
        download = await saved.value
        pdf = Path(await download.path()).read_bytes()

        await tab.page.evaluate("(hold) => hook.createJob('test.steps', {n: 3, hold})", str(tmp_path / "never"))
        await tab.wait_for("hook.status === 'running'")
        await tab.page.evaluate("() => hook.cancel()")
        await tab.wait_for("hook.status === 'cancelled'")

        await tab.page.evaluate("() => hook.createJob('test.fail', {permanent: true})")
        await tab.wait_for("hook.status === 'failed'")
        failed = await tab.page.evaluate("hook.error")

        refused = await tab.page.evaluate("() => hook.createJob('no.such.type', {}).then(() => null, (e) => e.code)")
        after_refusal = await tab.page.evaluate("[hook.status, hook.error.code, hook.error.status]")
        await tab.page.evaluate("() => unmount()")
        await tab.wait_for("offload.connection === 'closed'")  # the effect's cleanup ended the watch
    statuses = [r["status"] for r in renders]
    assert statuses[0] == "idle" and "submitting" in statuses and statuses[-1] == "completed", statuses
    progress = [r["progress"] for r in renders]
    assert progress == sorted(progress), progress
    assert pdf.startswith(b"%PDF-") and len(pdf) == size and download.suggested_filename.endswith(".pdf")
    assert failed == {"type": failed["type"], "message": "this input can never work"}
    assert refused == "validation_error" and after_refusal == ["idle", "validation_error", 422]
    # it follows the WebSocket: the job is never polled over REST
    polled = [r.url for r in tab.requests if r.method == "GET" and "/api/jobs/" in r.url and "/download" not in r.url]
    assert polled == [], polled
    assert not tab.errors(), tab.console
