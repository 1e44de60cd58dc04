// offload.js: the browser client of offload. A plain ES module, no build step, no dependency.
//
//   import { Offload } from "/static/offload.js";
//   const offload = new Offload({ token });            // url: the page's origin by default
//   const { jobId } = await offload.submit("pdf", invoice, { priority: "high" });
//   const stop = offload.watch(jobId, (event) => { ... });   // snapshot, then progress/status
//   const pdf = await offload.download(jobId);          // a Blob; offload.save(jobId) saves it
//
// Every watch of one client shares ONE WebSocket. It opens with the first watch, closes with
// the last, and after a dropped connection reconnects with exponential backoff and subscribes
// again: the server answers each subscribe with a snapshot, so a watcher learns the current
// state and never misses a final status; an event whose `seq` is not newer than the last one
// a watcher saw of that job is dropped, so nothing is delivered twice. With a token, the
// socket never carries it: every (re)connect trades it for a fresh single-use ticket
// (`POST /api/ws-ticket`) and opens `/api/ws?ticket=…`, because URLs end up in logs.

export const TERMINAL = Object.freeze(["completed", "failed", "cancelled"]);
const RECONNECT_FIRST_MS = 500;
const RECONNECT_MAX_MS = 15000;
const PING_EVERY_MS = 20000;

/** Whether a job status is final (completed, failed or cancelled). */
export const isTerminal = (status) => TERMINAL.includes(status);

/** An error answer of the API (`{"error": {"code", "message"}}`), or an unreachable service
 * (`code` "unreachable", `status` 0). `retryAfter` is in seconds when the server sent one. */
export class OffloadError extends Error {
  constructor(code, message, status = 0, retryAfter = null) {
    super(message);
    this.name = "OffloadError";
    this.code = code;
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

/** Save `blob` as a file named `filename` (the browser's download, no navigation). */
export function saveBlob(blob, filename = "") {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  a.rel = "noopener";
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30000); // the download has started by then
}

/** The file name of a Content-Disposition header: `filename*` (UTF-8) first, else `filename`. */
export function dispositionFilename(header) {
  if (!header) return "";
  const star = /filename\*\s*=\s*UTF-8''([^;]+)/i.exec(header);
  if (star) {
    try {
      return decodeURIComponent(star[1].trim());
    } catch {
      // a malformed escape: fall back to the plain name
    }
  }
  const plain = /filename\s*=\s*(?:"([^"]*)"|([^;]+))/i.exec(header);
  return plain ? (plain[1] ?? plain[2]).trim() : "";
}

export class Offload {
  /**
   * @param {{url?: string, token?: string, WebSocket?: typeof WebSocket}} [options]
   *   `url`: the service's address (default: the page's origin); `token`: a bearer token,
   *   only when the service has `[auth]` tokens.
   */
  constructor({ url, token, WebSocket: Socket } = {}) {
    this.url = String(url ?? globalThis.location?.origin ?? "").replace(/\/+$/, "");
    this.token = token || "";
    this._Socket = Socket ?? globalThis.WebSocket;
    this._watchers = new Set();   // {target: jobId | "all", onEvent, seen: Map jobId -> seq}
    this._jobs = new Map();       // jobId -> the latest job this socket told of
    this._pending = [];           // job ids subscribed one by one, not yet answered
    this._ws = null;
    this._attempt = 0;
    this._timer = null;
    this._pinger = null;
    this._heard = 0;
    this._state = "closed";
    this._stateListeners = new Set();
  }

  // ---------------------------------------------------------------- REST

  /** Submit a job: resolves `{jobId, status, createdAt}`. `options` as in the API
   * (`priority`, `maxRetries`, `retryDelay`, `timeout`, `delay`, `runAt`, `idempotencyKey`). */
  submit(type, data, options) {
    return this._json("POST", "/api/jobs", options === undefined ? { type, data } : { type, data, options });
  }

  /** The job, as the API's wire format. */
  get(id) {
    return this._json("GET", `/api/jobs/${encodeURIComponent(id)}`);
  }

  /** One page of your jobs, newest first: `{jobs, nextCursor}`; pass `nextCursor` back as `cursor`. */
  list({ status, type, limit, cursor } = {}) {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries({ status, type, limit, cursor })) {
      if (value !== undefined && value !== null && value !== "") query.set(key, String(value));
    }
    const qs = query.toString();
    return this._json("GET", `/api/jobs${qs ? `?${qs}` : ""}`);
  }

  /** Every job matching `filters` (`status`, `type`, `limit` per page), over all pages:
   * `for await (const job of offload.jobs({status: "failed"})) …` */
  async *jobs(filters = {}) {
    let cursor = undefined;
    do {
      const page = await this.list({ ...filters, cursor });
      yield* page.jobs;
      cursor = page.nextCursor;
    } while (cursor);
  }

  /** Cancel a pending or running job. Resolves the job: `cancelled` (HTTP 200), or still
   * `running` with `cancelRequested: true` while its attempt stops (HTTP 202); the final
   * `cancelled` then comes as a status event. A finished job rejects: OffloadError `conflict`, status 409. */
  cancel(id) {
    return this._json("DELETE", `/api/jobs/${encodeURIComponent(id)}`);
  }

  /** Job counts (and for operators the queue and its workers), as `GET /api/stats`. */
  stats() {
    return this._json("GET", "/api/stats");
  }

  /** The [[schedules]] of config.toml with their next run, as `GET /api/schedules`. */
  schedules() {
    return this._json("GET", "/api/schedules");
  }

  /** The result file of a completed job, as a Blob (`blob.type` is its content type). */
  async download(id) {
    return (await this._download(id)).blob;
  }

  /** Download the result and save it as a file (`filename`: the server's name by default). */
  async save(id, filename) {
    const { blob, name } = await this._download(id);
    saveBlob(blob, filename ?? name);
    return blob;
  }

  async _download(id) {
    const response = await this._fetch("GET", `/api/jobs/${encodeURIComponent(id)}/download`);
    if (!response.ok) throw await errorOf(response);
    return { blob: await response.blob(), name: dispositionFilename(response.headers.get("Content-Disposition")) };
  }

  async _json(method, path, body) {
    const response = await this._fetch(method, path, body);
    if (!response.ok) throw await errorOf(response);
    return response.json();
  }

  async _fetch(method, path, body) {
    const headers = { Accept: "application/json" };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    const init = { method, headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    try {
      return await fetch(this.url + path, init);
    } catch (err) {
      throw new OffloadError("unreachable", `offload at ${this.url || "this origin"} cannot be reached (${err.message}).`);
    }
  }

  // ---------------------------------------------------------------- live events

  /**
   * Follow one job (`jobId`) or every job of yours (`"all"`): `onEvent` gets
   * `{event: "snapshot", job}`, `{event: "progress", jobId, progress, message, seq}`,
   * `{event: "status", jobId, status, job, seq}` and `{event: "error", code, message, jobId?}`
   * (e.g. `not_found` for an unknown job id). Returns the function that stops this watch.
   */
  watch(target, onEvent) {
    if (typeof onEvent !== "function") throw new TypeError("watch(jobId | \"all\", onEvent): onEvent must be a function");
    if (typeof target !== "string" || !target) throw new TypeError("watch: the target is a job id or \"all\"");
    // A watch of one job is told nothing before its snapshot: that is its starting state.
    const watcher = { target, onEvent, seen: new Map(), ready: target === "all" };
    const alreadyAll = this._watchesAll();
    this._watchers.add(watcher);
    if (this._ws?.readyState === 1) {
      if (target !== "all") {
        const known = this._jobs.get(target); // what the socket already tells of it
        if (known) this._deliver(watcher, { event: "snapshot", job: known }, target, known.seq);
        this._subscribe(target);
      } else if (alreadyAll) {
        // The socket is subscribed to all already (the server ignores a second one): this
        // watcher's snapshots come from what the socket has told so far.
        for (const job of this._jobs.values()) {
          if (!isTerminal(job.status)) this._deliver(watcher, { event: "snapshot", job }, job.id, job.seq);
        }
      } else {
        this._send({ op: "subscribe", all: true });
      }
    } else {
      this._connect();
    }
    return () => this._unwatch(watcher);
  }

  /** Connection state: "connecting", "live", "offline" (retrying) or "closed" (no watch). */
  get connection() {
    return this._state;
  }

  /** Call `listener(state, detail)` on every connection change; returns the unsubscribe. */
  onConnection(listener) {
    this._stateListeners.add(listener);
    return () => this._stateListeners.delete(listener);
  }

  /** Change the token; an open socket reconnects with it. */
  setToken(token) {
    this.token = token || "";
    if (this._ws) this._ws.close(4000, "token changed");
  }

  /** Stop every watch and close the socket. */
  close() {
    this._watchers.clear();
    this._disconnect();
  }

  _watchesAll() {
    for (const w of this._watchers) if (w.target === "all") return true;
    return false;
  }

  _unwatch(watcher) {
    if (!this._watchers.delete(watcher)) return;
    if (this._watchers.size === 0) {
      this._disconnect();
      return;
    }
    const { target } = watcher;
    if (target !== "all" && ![...this._watchers].some((w) => w.target === target) && !this._watchesAll()) {
      this._send({ op: "unsubscribe", jobId: target });
    }
  }

  _disconnect() {
    clearTimeout(this._timer);
    clearInterval(this._pinger);
    this._timer = this._pinger = null;
    const ws = this._ws;
    this._ws = null;
    this._attempt = 0;
    this._jobs.clear();
    ws?.close(1000, "no more watches");
    this._setState("closed");
  }

  _setState(state, detail) {
    if (state === this._state && detail === undefined) return;
    this._state = state;
    for (const listener of this._stateListeners) {
      try {
        listener(state, detail);
      } catch (err) {
        console.error(err);
      }
    }
  }

  async _socketUrl() {
    const base = new URL(this.url || globalThis.location.href);
    const scheme = base.protocol === "https:" ? "wss:" : "ws:";
    let query = "";
    if (this.token) {
      const { ticket } = await this._json("POST", "/api/ws-ticket");
      query = `?ticket=${encodeURIComponent(ticket)}`;
    }
    return `${scheme}//${base.host}/api/ws${query}`;
  }

  async _connect() {
    if (this._ws || this._timer || this._state === "connecting") return;
    this._setState("connecting");
    let url;
    try {
      url = await this._socketUrl();
    } catch (err) {
      this._retry(err); // unreachable, or a wrong token: try again later
      return;
    }
    if (this._watchers.size === 0) {
      this._setState("closed");
      return; // every watch ended while the ticket was on its way
    }
    const ws = new this._Socket(url);
    this._ws = ws;
    ws.addEventListener("open", () => {
      if (this._ws !== ws) return;
      this._setState("live");
      this._heard = Date.now();
      this._pending = [];
      if (this._watchesAll()) this._send({ op: "subscribe", all: true });
      // One by one: the watched jobs, and under "all" the unfinished ones this socket knew of,
      // which a finished job drops out of `subscribe all`'s snapshots: its own snapshot tells.
      const ids = new Set([...this._watchers].map((w) => w.target).filter((t) => t !== "all"));
      for (const job of this._jobs.values()) if (!isTerminal(job.status)) ids.add(job.id);
      for (const id of ids) this._subscribe(id);
      clearInterval(this._pinger);
      this._pinger = setInterval(() => this._keepAlive(ws), PING_EVERY_MS);
    });
    ws.addEventListener("message", (m) => {
      if (this._ws !== ws) return;
      this._heard = Date.now();
      let event;
      try {
        event = JSON.parse(m.data);
      } catch {
        return;
      }
      this._handle(event);
    });
    ws.addEventListener("close", (e) => {
      if (this._ws !== ws) return;
      this._ws = null;
      clearInterval(this._pinger);
      this._retry(e);
    });
  }

  _keepAlive(ws) {
    // A connection that has said nothing for two pings is dead (a sleeping laptop, a lost
    // route): close it, and the close handler reconnects.
    if (Date.now() - this._heard > 2.5 * PING_EVERY_MS) ws.close(4001, "no answer");
    else this._send({ op: "ping" });
  }

  _retry(detail) {
    if (this._watchers.size === 0) {
      this._setState("closed");
      return;
    }
    // Exponential backoff with jitter: 0.5 s, 1 s, 2 s … capped at 15 s.
    const pause = Math.min(RECONNECT_MAX_MS, RECONNECT_FIRST_MS * 2 ** this._attempt++);
    const hinted = (detail instanceof OffloadError && detail.retryAfter ? detail.retryAfter * 1000 : 0);
    const delay = Math.max(hinted, pause * (0.5 + Math.random() / 2));
    this._setState("offline", { retryIn: delay, error: detail instanceof OffloadError ? detail : null });
    this._timer = setTimeout(() => {
      this._timer = null;
      this._connect();
    }, delay);
  }

  _send(message) {
    if (this._ws?.readyState === 1) this._ws.send(JSON.stringify(message));
  }

  _subscribe(jobId) {
    this._pending.push(jobId);
    this._send({ op: "subscribe", jobId });
  }

  _handle(event) {
    let jobId;
    let seq;
    switch (event.event) {
      case "snapshot":
      case "status":
        if (!event.job || typeof event.job.id !== "string") return;
        jobId = event.job.id;
        seq = event.job.seq;
        this._remember(event.job);
        if (event.event === "snapshot") {
          const i = this._pending.indexOf(jobId);
          if (i >= 0) this._pending.splice(i, 1);
        }
        break;
      case "progress": {
        jobId = event.jobId;
        seq = event.seq;
        const known = this._jobs.get(jobId);
        if (known && seq > known.seq) {
          this._jobs.set(jobId, { ...known, progress: event.progress, message: event.message, seq });
        }
        break;
      }
      case "error": {
        // Subscribes are answered in order: a not_found answers the oldest unanswered one.
        const about = event.code === "not_found" ? this._pending.shift() : undefined;
        const error = about ? { ...event, jobId: about } : event;
        for (const w of [...this._watchers]) {
          if (!about || w.target === about || w.target === "all") this._call(w, error);
        }
        return;
      }
      default:
        return; // pong, or an event this client does not know
    }
    this._attempt = 0; // the service answers with job events again: the backoff starts over
    for (const w of [...this._watchers]) {
      if (w.target === "all" || w.target === jobId) this._deliver(w, event, jobId, seq);
    }
  }

  _remember(job) {
    // Only unfinished jobs are kept: they are the ones to subscribe to again after a reconnect.
    const known = this._jobs.get(job.id);
    if (known && job.seq < known.seq) return;
    if (isTerminal(job.status)) this._jobs.delete(job.id);
    else this._jobs.set(job.id, job);
  }

  _deliver(watcher, event, jobId, seq) {
    if (!watcher.ready) {
      if (event.event !== "snapshot") return; // already in the snapshot on its way
      watcher.ready = true;
    }
    const last = watcher.seen.get(jobId);
    if (last !== undefined && !(seq > last)) return;
    watcher.seen.set(jobId, seq);
    this._call(watcher, event);
  }

  _call(watcher, event) {
    try {
      watcher.onEvent(event);
    } catch (err) {
      console.error(err); // one watcher's bug must not stop the others
    }
  }
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON (a proxy's page): the status tells
  }
  const header = response.headers.get("Retry-After");
  const retryAfter = header !== null && /^\d+$/.test(header.trim()) ? Number(header) : null;
  const code = body?.error?.code || `http_${response.status}`;
  const message = body?.error?.message || `offload answered HTTP ${response.status}.`;
  return new OffloadError(code, message, response.status, retryAfter);
}
