// offload demo page: submit a sample of each built-in job type, watch every job live over one WebSocket.
// A plain ES module on top of offload.js, the browser client (its first user). Job data only
// ever reaches the DOM via textContent.

import { Offload, isTerminal } from "./offload.js";

const MAX_ROWS = 50;
const STATS_EVERY_MS = 3000;

const $ = (id) => document.getElementById(id);
const jobs = new Map();     // id -> latest job object (wire format) this page shows
const rows = new Map();     // id -> {li, ...element refs}
const fetching = new Set(); // ids with a GET /api/jobs/{id} in flight

// ---------------------------------------------------------------- token

// With [auth] tokens configured, every /api call needs one: the user pastes it once and the
// page keeps it in localStorage (this browser only). offload.js sends it as a Bearer header
// and opens the WebSocket with a single-use ticket, never with the token in the URL.
const TOKEN_KEY = "offload.token";
const offload = new Offload({ token: localStorage.getItem(TOKEN_KEY) || "" });

function setUpToken() {
  const form = $("token-form");
  form.elements.namedItem("token").value = offload.token;
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const value = form.elements.namedItem("token").value.trim();
    if (value) localStorage.setItem(TOKEN_KEY, value);
    else localStorage.removeItem(TOKEN_KEY);
    notice(value ? "Token saved in this browser." : "Token removed.", "ok");
    offload.setToken(value); // the socket reconnects with the new token
    loadRecent();
    refreshStats();
  });
}

/** What the page says about an error; a 401 tells where the token goes. */
function explain(err) {
  return err.status === 401 ? `${err.message} Paste your token in the Token field.` : err.message;
}

// ---------------------------------------------------------------- REST

async function loadRecent() {
  try {
    const page = await offload.list({ limit: 20 });
    for (const job of page.jobs) applyJob(job);
  } catch (err) {
    notice(`Could not load recent jobs: ${explain(err)}`, "error");
  }
}

async function fetchJob(id) {
  if (fetching.has(id)) return;
  fetching.add(id);
  try {
    applyJob(await offload.get(id));
  } catch {
    // gone or unreachable: the next event or reload will tell
  } finally {
    fetching.delete(id);
  }
}

let statsTimer = null;
let statsDue = Infinity;

/** Refresh the counts within `delay` ms; an earlier refresh already planned stands. */
function scheduleStats(delay) {
  const due = Date.now() + delay;
  if (due >= statsDue) return;
  clearTimeout(statsTimer);
  statsDue = due;
  statsTimer = setTimeout(refreshStats, delay);
}

async function refreshStats() {
  clearTimeout(statsTimer);
  statsDue = -Infinity; // a request is in flight: the finally below plans the next one
  try {
    const stats = await offload.stats();
    for (const li of $("counts").querySelectorAll("li[data-status]")) {
      li.querySelector(".n").textContent = String(stats.jobs?.[li.dataset.status] ?? 0);
    }
    const w = stats.scheduler?.workers;
    $("workers").querySelector(".n").textContent = w ? `${w.busy}/${w.processes}` : "–";
  } catch {
    for (const n of $("counts").querySelectorAll(".n")) n.textContent = "–";
  } finally {
    statsDue = Infinity;
    scheduleStats(STATS_EVERY_MS);
  }
}

// ---------------------------------------------------------------- live events

// One watch of every job: offload.js reconnects after a drop and subscribes again (fresh
// snapshots, also of the jobs it knew unfinished). A job this page only fetched over REST
// while the socket was down may have finished meanwhile: the list is loaded again too.
let liveBefore = false;

function watchJobs() {
  offload.onConnection((state, detail) => {
    if (state === "live") {
      if (liveBefore) loadRecent();
      liveBefore = true;
    }
    const el = $("conn");
    el.dataset.state = state === "closed" ? "offline" : state;
    el.textContent = state === "offline" && detail?.retryIn !== undefined
      ? `offline · retrying in ${Math.ceil(detail.retryIn / 1000)} s`
      : state === "connecting" ? "connecting…" : state;
  });
  offload.watch("all", handleEvent);
}

function handleEvent(event) {
  switch (event.event) {
    case "snapshot":
      applyJob(event.job);
      break;
    case "status":
      applyJob(event.job);
      scheduleStats(300); // counts changed: do not wait for the next tick
      break;
    case "progress": {
      const known = jobs.get(event.jobId);
      if (!known) {
        fetchJob(event.jobId);
      } else if (event.seq > known.seq) {
        applyJob({ ...known, progress: event.progress, message: event.message, seq: event.seq });
      }
      break;
    }
    case "error":
      notice(`Live updates: ${event.message}`, "error");
      break;
  }
}

// ---------------------------------------------------------------- job list

/** Show `job` unless the page already shows the same or a newer state of it. */
function applyJob(job) {
  if (!job || typeof job.id !== "string") return;
  const known = jobs.get(job.id);
  if (known && !(job.seq > known.seq)) return;
  jobs.set(job.id, job);
  let row = rows.get(job.id);
  if (!row) {
    row = createRow(job);
    rows.set(job.id, row);
    insertRow(row.li, job);
    trimRows();
  }
  updateRow(row, job);
  $("empty").hidden = rows.size > 0;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function createRow(job) {
  const li = el("li", "job");
  li.dataset.id = job.id;
  li.dataset.created = job.createdAt ?? "";
  const head = el("div", "job-head");
  const id = el("code", "job-id", shortId(job.id));
  id.title = job.id;
  const type = el("span", "job-type");
  const priority = el("span", "job-priority");
  const created = el("time", "job-time");
  const badge = el("span", "badge");
  head.append(id, type, priority, created, badge);

  const bar = el("div", "bar");
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  const fill = el("div", "bar-fill");
  bar.append(fill);

  const foot = el("div", "job-foot");
  const message = el("span", "job-message");
  const attempts = el("span", "job-attempts");
  foot.append(message, attempts);

  const outcome = el("div", "job-outcome");
  li.append(head, bar, foot, outcome);
  return { li, type, priority, created, badge, bar, fill, message, attempts, outcome };
}

function updateRow(row, job) {
  const progress = Math.max(0, Math.min(100, Number(job.progress) || 0));
  row.li.dataset.status = job.status;
  row.type.textContent = job.type;
  row.priority.textContent = job.priority;
  row.priority.dataset.priority = job.priority;
  if (job.createdAt) {
    row.created.dateTime = job.createdAt;
    row.created.textContent = new Date(job.createdAt).toLocaleTimeString();
  }
  row.badge.textContent = job.status;
  row.badge.dataset.status = job.status;
  row.bar.setAttribute("aria-valuenow", String(progress));
  row.fill.style.width = `${progress}%`;
  row.message.textContent = `${progress}%${job.message ? ` · ${job.message}` : ""}`;
  row.attempts.textContent = `attempts ${job.attempts}/${job.maxRetries + 1}`;
  row.attempts.title = "attempts made / attempts allowed (1 + maxRetries)";

  // Rebuilt only when what it shows changes: a progress event must not replace a Cancel
  // button the user just pressed (and disabled) with a fresh one.
  const active = job.status === "pending" || job.status === "running";
  const outcomeKey = active ? `active:${job.cancelRequested === true}` : `${job.status}:${job.result?.url ?? ""}:${job.error?.message ?? ""}`;
  if (row.outcomeKey === outcomeKey) return;
  row.outcomeKey = outcomeKey;
  row.outcome.replaceChildren();
  if (job.status === "completed" && job.result?.url) {
    const href = sameOriginUrl(job.result.url);
    if (href) {
      const link = el("a", "download", `Download PDF`);
      link.href = href;
      link.download = job.result.filename || "";
      link.addEventListener("click", (e) => downloadWithToken(e, job.id, link.download));
      const name = el("span", "filename", job.result.filename || "");
      row.outcome.append(link, name);
    }
  } else if (job.status === "failed" && job.error) {
    row.outcome.append(el("p", "job-error", `${job.error.type ? `${job.error.type}: ` : ""}${job.error.message}`));
    if (job.error.traceback) {  // a handler that raised: where, for whoever wrote it
      const details = el("details", "job-traceback");
      details.append(el("summary", "", "Traceback"), el("pre", "", job.error.traceback));
      row.outcome.append(details);
    }
  } else if (active) {
    // A cancel asked for (202) whose attempt is still stopping: nothing more to press.
    const stopping = job.cancelRequested === true;
    const cancel = el("button", "cancel", stopping ? "Cancelling…" : "Cancel");
    cancel.type = "button";
    cancel.disabled = stopping;
    cancel.addEventListener("click", () => cancelJob(job.id, cancel));
    row.outcome.append(cancel);
  }
}

function insertRow(li, job) {
  const list = $("jobs");
  const created = job.createdAt ?? "";
  for (const other of list.children) {
    if (other.dataset.created < created) {
      list.insertBefore(li, other);
      return;
    }
  }
  list.append(li);
}

function trimRows() {
  const list = $("jobs");
  let li = list.lastElementChild;
  while (rows.size > MAX_ROWS && li) {
    const previous = li.previousElementSibling;
    const job = jobs.get(li.dataset.id);
    if (job && isTerminal(job.status)) {
      li.remove();
      rows.delete(job.id);
      jobs.delete(job.id);
    }
    li = previous;
  }
}

async function cancelJob(id, button) {
  button.disabled = true;
  try {
    // 200: cancelled; 202: the attempt is still stopping (cancelRequested), and the final
    // `cancelled` comes as a status event. The button stays disabled meanwhile.
    applyJob(await offload.cancel(id));
  } catch (err) {
    notice(explain(err), "error");
    button.disabled = false;
  }
}

/** A plain link cannot send the Bearer header: with a token, fetch the file and save it. */
async function downloadWithToken(e, id, filename) {
  if (!offload.token) return;
  e.preventDefault();
  try {
    await offload.save(id, filename || undefined);
  } catch (err) {
    notice(`Could not download: ${explain(err)}`, "error");
  }
}

function shortId(id) {
  return id.length > 12 ? `${id.slice(0, 12)}…` : id;
}

/** Only links into this service: a result URL is data, never a javascript: URL. */
function sameOriginUrl(url) {
  try {
    const parsed = new URL(url, location.href);
    return parsed.origin === location.origin ? parsed.href : null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------- sample invoice

const CUSTOMERS = [
  { name: "Ada Lovelace", address: "12 Analytical Row\nLondon NW1 6XE\nUnited Kingdom", email: "ada@example.com" },
  { name: "Brasserie Lumière SARL", address: "8 rue des Lilas\n69003 Lyon\nFrance", email: "compta@lumiere.example" },
  { name: "Grünwald Maschinenbau GmbH", address: "Industriestraße 41\n80939 München\nGermany", email: "einkauf@gruenwald.example" },
  { name: "Studio Aalto Oy", address: "Mannerheimintie 5 B\n00100 Helsinki\nFinland", email: "office@aalto-studio.example" },
];

const PRODUCTS = [
  ["Oak standing desk", 489.0], ["Ergonomic office chair", 229.9], ["27\" 4K monitor", 319.0],
  ["Monitor arm, dual", 89.5], ["USB-C docking station", 149.0], ["Mechanical keyboard", 119.0],
  ["Wireless mouse", 39.99], ["LED desk lamp", 45.5], ["Cable management tray", 24.9],
  ["Notebook A5, pack of 5", 12.75], ["Whiteboard markers, set of 8", 6.4], ["Laptop stand, aluminium", 59.0],
  ["Noise-cancelling headset", 189.0], ["HDMI cable 2 m", 9.95], ["Acoustic wall panel", 74.0],
  ["Printer paper A4, 500 sheets", 5.49], ["Coffee beans 1 kg", 21.8], ["Support hours (consulting)", 95.0],
];

const pick = (list) => list[Math.floor(Math.random() * list.length)];
const randomInt = (lo, hi) => lo + Math.floor(Math.random() * (hi - lo + 1));

function today() {
  const d = new Date();
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

function sampleInvoice(itemCount, priority) {
  const digits = randomInt(4, 6);
  const number = `INV-${randomInt(10 ** (digits - 1), 10 ** digits - 1)}`;
  const items = [];
  for (let i = 0; i < itemCount; i++) {
    const p = randomInt(0, PRODUCTS.length - 1);
    const [name, unitPrice] = PRODUCTS[p];
    items.push({ name, quantity: randomInt(1, 12), unitPrice, sku: `SKU-${String(p + 1).padStart(3, "0")}-${randomInt(100, 999)}` });
  }
  return {
    type: "pdf",
    data: {
      type: "invoice",
      order: { number, date: today(), currency: "EUR", taxRate: 0.2, customer: { ...pick(CUSTOMERS) } },
      items,
    },
    options: { priority },
  };
}

// ---------------------------------------------------------------- the other samples

function sampleReport(rowCount, priority) {
  const regions = ["North", "South", "East", "West", "Central"];
  const rows = [];
  for (let i = 0; i < rowCount; i++) {
    rows.push([`${pick(regions)} ${i + 1}`, randomInt(50, 2000), randomInt(1000, 90000) / 100]);
  }
  const quarters = ["Q1", "Q2", "Q3", "Q4"];
  const series = regions.slice(0, 3).map((name) => ({ name, values: quarters.map(() => randomInt(5, 40)) }));
  return {
    type: "pdf",
    data: {
      type: "report", title: "Quarterly operations", subtitle: "A sample report from the offload page", date: today(),
      sections: [
        { heading: "Summary", paragraphs: ["Orders grew in every region this quarter.", "Deliveries got faster."] },
        { heading: "Orders by branch", table: { columns: ["Branch", "Orders", "Revenue"], rows } },
        { heading: "Units by quarter", chart: { kind: "bar", title: "Units sold", categories: quarters, series } },
        { heading: "Trend", chart: { kind: "line", title: "Units sold", categories: quarters, series } },
      ],
    },
    options: { priority },
  };
}

function sampleExport(rowCount, priority) {
  const rows = [];
  for (let i = 0; i < rowCount; i++) {
    const [name, unitPrice] = pick(PRODUCTS);
    rows.push({ order: `ORD-${1000 + i}`, product: name, quantity: randomInt(1, 12), unitPrice, date: today() });
  }
  return { type: "export", data: { format: "xlsx", filename: "orders.xlsx", rows }, options: { priority } };
}

/** A small picture drawn here, sent inline as base64 PNG: three sizes come back in one zip. */
function sampleImage(priority) {
  const canvas = document.createElement("canvas");
  canvas.width = 640;
  canvas.height = 480;
  const g = canvas.getContext("2d");
  const gradient = g.createLinearGradient(0, 0, 640, 480);
  gradient.addColorStop(0, `hsl(${randomInt(0, 359)} 70% 55%)`);
  gradient.addColorStop(1, `hsl(${randomInt(0, 359)} 70% 35%)`);
  g.fillStyle = gradient;
  g.fillRect(0, 0, 640, 480);
  g.fillStyle = "rgba(255,255,255,0.85)";
  g.font = "bold 64px sans-serif";
  g.fillText("offload", 170, 260);
  const base64 = canvas.toDataURL("image/png").split(",", 2)[1];
  return {
    type: "image",
    data: {
      image: { base64, filename: "sample.png" },
      outputs: [
        { name: "thumb", thumbnail: { width: 128, height: 128 }, format: "webp" },
        { name: "banner", resize: { width: 600, height: 200, fit: "cover" }, format: "jpeg", quality: 80 },
        { name: "square", crop: { left: 80, top: 0, width: 480, height: 480 }, format: "png" },
      ],
    },
    options: { priority },
  };
}

let lastInvoice = null; // {jobId, number, customer} of the last invoice this page submitted

/** Mail the last invoice submitted here (attached: the email waits for its PDF). */
function sampleEmail(priority) {
  const customer = lastInvoice ? lastInvoice.customer : pick(CUSTOMERS);
  const data = {
    to: [{ address: customer.email, name: customer.name }],
    subject: lastInvoice ? `Your invoice ${lastInvoice.number}` : "Hello from offload",
    text: "Dear {name},\n\nthank you for your order.",
  };
  if (lastInvoice) data.attachments = [{ job: lastInvoice.jobId }];
  return { type: "email", data, options: { priority } };
}

function sampleOf(kind, count, priority) {
  switch (kind) {
    case "report": return sampleReport(count, priority);
    case "export": return sampleExport(count, priority);
    case "image": return sampleImage(priority);
    case "email": return sampleEmail(priority);
    default: return sampleInvoice(count, priority);
  }
}

function describe(payload, count) {
  switch (payload.type === "pdf" ? payload.data.type : payload.type) {
    case "invoice": return `invoice ${payload.data.order.number} (${count} items)`;
    case "report": return `a report (${count} table rows)`;
    case "export": return `an export of ${count} rows`;
    case "image": return "an image in three sizes";
    default: return payload.data.attachments ? `an email with invoice ${lastInvoice.number}` : "an email";
  }
}

// ---------------------------------------------------------------- form

let noticeTimer = null;

function notice(text, kind) {
  const el = $("notice");
  el.textContent = text;
  el.dataset.kind = kind;
  el.hidden = false;
  clearTimeout(noticeTimer);
  if (kind === "ok") noticeTimer = setTimeout(() => { el.hidden = true; }, 6000);
}

function setUpForm() {
  const form = $("submit-form");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const count = Number(form.elements.namedItem("lineItems").value);
    const priority = form.elements.namedItem("priority").value;
    const kind = form.elements.namedItem("sample").value;
    if (!Number.isInteger(count) || count < 1 || count > 10000) {
      notice("Items / rows must be a whole number from 1 to 10000.", "error");
      return;
    }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    const payload = sampleOf(kind, count, priority);
    try {
      const answer = await offload.submit(payload.type, payload.data, payload.options);
      notice(`Submitted ${describe(payload, count)} as ${answer.jobId}.`, "ok");
      if (kind === "invoice") {
        lastInvoice = { jobId: answer.jobId, number: payload.data.order.number, customer: payload.data.order.customer };
      }
      if (!jobs.has(answer.jobId)) fetchJob(answer.jobId); // in case the socket is down
    } catch (err) {
      notice(explain(err), "error");
    } finally {
      button.disabled = false;
    }
  });
}

// ---------------------------------------------------------------- schedules

// The [[schedules]] of config.toml (GET /api/schedules), read at load and every 30 s; the
// card stays hidden when there are none. Text reaches the DOM via textContent only.
const SCHEDULES_EVERY_MS = 30000;

function localTime(iso) {
  return iso ? new Date(iso).toLocaleString() : "–";
}

async function loadSchedules() {
  try {
    const { schedules } = await offload.schedules();
    const body = $("schedule-rows");
    body.replaceChildren(...schedules.map((s) => {
      const tr = el("tr");
      const cells = [s.name, `${s.cron} (${s.timezone})`, s.type, localTime(s.nextRunAt), localTime(s.lastSlot),
        s.lastJobId ? shortId(s.lastJobId) : (s.lastSlot ? "passed over" : "–")];
      for (const text of cells) tr.append(el("td", "", text));
      return tr;
    }));
    $("schedules").hidden = schedules.length === 0;
  } catch {
    // no token yet, or the service is away: the stats strip says so already
  } finally {
    setTimeout(loadSchedules, SCHEDULES_EVERY_MS);
  }
}

setUpToken();
setUpForm();
loadRecent();
refreshStats();
watchJobs();
loadSchedules();
