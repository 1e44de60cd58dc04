"""Configuration: `config.toml`, then `OFFLOAD_<SECTION>_<KEY>` environment variables, then
command-line flags, each stronger than the one before. An unknown key in the file, or a
value of the wrong type anywhere, stops start-up with a message naming it.

The environment is shared with other software: Kubernetes injects `OFFLOAD_PORT=tcp://…`,
`OFFLOAD_SERVICE_HOST` and more into every pod of a namespace with a Service named
`offload`. So an `OFFLOAD_*` variable that names no setting is a warning, not an error;
`OFFLOAD_URL` and `OFFLOAD_TOKEN` are the clients' and pass silently. Per-type settings
are `OFFLOAD_JOBS_SETTINGS_<TYPE>_<KEY>` (`OFFLOAD_JOBS_SETTINGS_PDF_CURRENCY=USD`)."""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, get_args, get_type_hints


log = logging.getLogger("offload.config")

#: Read by offload's clients (where to connect, with which token), not by the server.
CLIENT_VARIABLES = frozenset({"OFFLOAD_URL", "OFFLOAD_TOKEN"})
_SETTINGS_PREFIX = "OFFLOAD_JOBS_SETTINGS_"


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    #: Seconds that running jobs get to finish on SIGTERM/Ctrl-C before they are stopped
    #: and put back to pending.
    shutdown_grace: float = 10.0
    #: Browser origins (besides the service's own) whose pages may open the WebSocket and
    #: send POST/DELETE, e.g. ("https://app.example.com",). Needed behind a proxy that
    #: changes scheme or port.
    allowed_origins: tuple[str, ...] = ()
    #: One line per HTTP request (credentials in URLs redacted). Off by default: a line per
    #: submission cost as much of the event loop as storing the job (see README, "Performance").
    access_log: bool = False
    #: `text` (readable lines) or `json` (one object a line, for log shippers); also
    #: `offload serve --log-format`.
    log_format: str = "text"


@dataclass(frozen=True)
class StoreConfig:
    #: `sqlite:///relative/or/absolute/path.db` or a plain path.
    url: str = "sqlite:///data/offload.db"
    #: `NORMAL` survives a crash of the process; `FULL` also survives power loss.
    synchronous: str = "NORMAL"
    #: How long a write waits for a lock held by another process before the service
    #: answers 503 store_unavailable.
    busy_timeout_ms: int = 2000
    #: PostgreSQL only (`postgresql://user@host/db`): the schema offload's tables live in,
    #: so it can share a database with the application; created when missing.
    schema: str = "offload"
    #: PostgreSQL only: connections of the read pool (the writer and the listener have one each).
    pool_min: int = 1
    pool_max: int = 4
    #: PostgreSQL only: how often a node looks at the database by itself, in case a
    #: notification was lost (new jobs, cancel requests, events of watched jobs).
    poll_ms: int = 1000
    #: PostgreSQL only: a direct URL for LISTEN when `url` goes through PgBouncer in
    #: transaction mode, which cannot hold a LISTEN; empty means `url`.
    listen_url: str = ""


@dataclass(frozen=True)
class WorkersConfig:
    #: The most worker processes; 0 means one per CPU.
    processes: int = 0
    #: Processes kept running while idle (started with the service); -1 means all of them.
    min_processes: int = -1
    #: Seconds an idle process above `min_processes` lives before it retires.
    idle_timeout: float = 60.0
    #: Jobs of `async def` types that may run at once on the event loop.
    async_concurrency: int = 100
    #: Per-process address-space limit in MiB; 0 means none.
    memory_limit_mb: int = 0
    #: Modules with the application's own `@job_type` handlers.
    modules: tuple[str, ...] = ()
    #: Process start method: forkserver (default: offload's own fork server, `workers/forkserver.py`;
    #: safe with threads, fast), or multiprocessing's spawn or fork.
    start_method: str = "forkserver"
    #: Seconds a cancelled or timed-out job gets to stop by itself (at its next
    #: `ctx.progress()`) before its process is killed.
    stop_grace: float = 0.5


@dataclass(frozen=True)
class JobsConfig:
    max_retries: int = 3
    retry_delay_ms: int = 1000
    timeout_ms: int = 300_000
    #: How long a running job's lease holds without renewal before another node (or this
    #: one after a restart) takes it back.
    lease_ms: int = 30_000
    #: Pending jobs the queue holds before submissions get 429 with Retry-After.
    max_pending: int = 100_000
    results_dir: str = "data/results"
    #: Settings handed to handlers as `ctx.settings`, keyed by job type.
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: {"pdf": {"currency": "EUR"}})


@dataclass(frozen=True)
class AuthConfig:
    #: Token → user. Convenient for development; prefer `tokens_file` or the
    #: OFFLOAD_AUTH_TOKENS environment variable ("user:token,user:token") for real secrets.
    tokens: Mapping[str, str] = field(default_factory=dict)
    #: A TOML file of `"<sha256 hex of a token>" = "user"` lines: secrets stored hashed.
    tokens_file: str = ""
    #: Users who operate the service: they see global job counts and node internals (node
    #: id, worker pids) in /api/stats and /api/health. Everyone else sees their own counts.
    #: In single-user mode the one user is the operator.
    admins: tuple[str, ...] = ()


@dataclass(frozen=True)
class LimitsConfig:
    #: Largest request body in bytes (413 beyond).
    max_body_bytes: int = 16 * 1024 * 1024
    #: Deepest nesting of arrays/objects in a job's `data` (422 beyond).
    max_json_depth: int = 32
    #: Job submissions per second per user, sustained (token bucket; 429 + Retry-After).
    submit_rate: float = 100.0
    #: Submissions a user may make at once before `submit_rate` applies.
    submit_burst: int = 2000
    #: Pending jobs one user may have queued (429 + Retry-After beyond); 0 = no cap.
    max_pending_per_user: int = 10_000
    #: Jobs one `POST /api/jobs/batch` may carry (422 naming the limit beyond).
    max_batch_jobs: int = 1000
    #: Jobs one job may follow (`options.after` with those its `data` names; 422 beyond).
    max_after: int = 50
    #: Jobs one user may have running at once (the rest wait their turn); 0 = no cap.
    max_running_per_user: int = 0
    #: Open WebSocket connections per user (429 beyond).
    max_websockets_per_user: int = 32
    #: Largest WebSocket message a client may send, in bytes (closed with 1009 beyond).
    max_ws_message_bytes: int = 64 * 1024
    #: Seconds between pings to each WebSocket; a client that does not answer within half
    #: of it is dropped.
    ws_heartbeat_s: float = 30.0
    #: Bytes a WebSocket may hold for its client unsent (queued events plus what the
    #: connection could not write yet); a client that stays above it for `ws_slow_close_s`
    #: seconds is closed with 1013.
    ws_max_unsent_bytes: int = 1024 * 1024
    #: Seconds a WebSocket client may stay above `ws_max_unsent_bytes` (a burst it reads
    #: through) before it is closed.
    ws_slow_close_s: float = 5.0
    #: Largest file uploaded with a job (multipart `file` part), in bytes (413 beyond).
    max_upload_bytes: int = 32 * 1024 * 1024
    #: Largest file sent inside the JSON as base64 (`data.image.base64`), decoded, in bytes (413 beyond).
    max_inline_upload_bytes: int = 1024 * 1024


#: How a schedule treats the slots that passed while the service was down (or reached them
#: more than a minute late): "one" runs the latest of them once; "skip" runs none.
CATCH_UP = ("one", "skip")
_SCHEDULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ScheduleConfig:
    """One `[[schedules]]` table: a job of `type` with `data` and `options`, submitted at each
    time `cron` names in `timezone`. `name` identifies it in the store (its fired slots) and
    in `/api/schedules`; renaming a schedule starts it afresh."""

    name: str
    cron: str
    type: str
    data: Any = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    #: An IANA zone (zoneinfo), e.g. "Europe/Berlin": the cron fields are read as its wall time.
    timezone: str = "UTC"
    catch_up: str = "one"
    #: Who owns its jobs; "" means the one user "local" of single-user mode (required with tokens).
    user: str = ""


_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
DURATION_EXAMPLES = '"90s", "15m", "24h" or "7d"'


def parse_duration(text: str, where: str = "duration") -> int | None:
    """A duration as the config writes it ("90s", "15m", "24h", "7d", also "1h30m" and
    "500ms") in milliseconds; None for "0", "off" or "" (the feature is off). Raises
    ConfigError naming `where` for anything else, a bare number included: "30" could mean
    seconds or days."""
    value = str(text).strip().lower()
    if value in ("", "0", "off"):
        return None
    pos, total = 0, 0
    while pos < len(value):
        match = _DURATION.match(value, pos)
        if match is None:
            raise ConfigError(f"{where}: {text!r} is not a duration (write it like {DURATION_EXAMPLES}; "
                              '"0" or "off" turns it off)')
        total += int(match.group(1)) * _UNIT_MS[match.group(2)]
        pos = match.end()
    return total or None


@dataclass(frozen=True)
class RetentionConfig:
    """How long finished jobs are kept, per status, as durations ("7d"); "0" or "off"
    keeps them forever. Read through `ms()`, which turns them into milliseconds."""

    completed: str = "7d"
    failed: str = "30d"
    cancelled: str = "1d"
    #: Result files of completed jobs are deleted this long after the job completed; the job
    #: stays and its download answers 410 Gone. "" (default): kept as long as the job.
    results: str = ""
    #: How often the cleanup runs.
    interval: str = "5m"
    #: Jobs deleted per transaction (~50 us each, on the store's writer); other writes go
    #: between two batches.
    batch: int = 200

    def ms(self, key: str) -> int | None:
        """The duration `key` in milliseconds, None when it is off."""
        return parse_duration(getattr(self, key), f"[retention] {key}")


@dataclass(frozen=True)
class StatsConfig:
    #: Seconds between two `stats` events to a WebSocket that sent `{"op": "subscribe", "stats": true}`.
    interval_s: float = 5.0
    #: The recent window of per-type run times and queue waits: its length in seconds, and
    #: the most samples kept per user and type (the oldest go first).
    window_s: float = 900.0
    window_samples: int = 1000
    #: Milliseconds a count read from the store (jobs by status and priority) is reused, so
    #: many dashboards polling at once cost one read per scope; 0 reads every time.
    cache_ms: int = 1000


@dataclass(frozen=True)
class MetricsConfig:
    #: A separate listener for `GET /metrics` with no token, as "127.0.0.1:9464"; loopback
    #: addresses only. Empty: none (`/metrics` on the main port is for operators).
    listen: str = ""


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    #: `[[schedules]]`: recurring jobs (`offload.service.schedules`).
    schedules: tuple[ScheduleConfig, ...] = ()
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    #: The folder relative paths resolve against: the config file's folder.
    base_dir: Path = field(default_factory=Path.cwd)

    def path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    @functools.cached_property
    def results_path(self) -> Path:
        return self.path(self.jobs.results_dir)

    @property
    def store_url(self) -> str:
        url = self.store.url
        if url == ":memory:":
            return url
        if "://" not in url:
            return f"sqlite:///{self.path(url)}"
        scheme, _, rest = url.partition("://")
        if scheme == "sqlite" and rest.startswith("/") and not rest.startswith("//"):
            return f"sqlite:///{self.path(rest[1:])}"
        return url

    @property
    def store_label(self) -> str:
        """The store as the log and the start-up line name it: the URL without a password,
        and a PostgreSQL schema."""
        url = self.store_url
        scheme, sep, rest = url.partition("://")
        if scheme not in ("postgresql", "postgres"):
            return url
        credentials, at, host = rest.rpartition("@")
        if at and ":" in credentials:
            url = f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{host}"
        return f"{url} schema {self.store.schema}"

    @property
    def process_count(self) -> int:
        return self.workers.processes or os.cpu_count() or 1

    def replace(self, **sections: Any) -> Config:
        """A copy with some keys changed: `cfg.replace(workers={"processes": 1})`; `schedules`
        takes the whole new tuple of `ScheduleConfig`s."""
        changes = {name: values if name == "schedules" else dataclasses.replace(getattr(self, name), **values)
                   for name, values in sections.items()}
        return dataclasses.replace(self, **changes)


_SECTIONS = {f.name: f.type for f in fields(Config) if f.name not in ("base_dir", "schedules")}
#: Where each value came from, by dotted key ("server.port", "jobs.settings.pdf.currency"):
#: "file PATH", "environment VAR", "flag" or, for a key absent here, the default.
Sources = dict[str, str]


def _coerce(where: str, value: Any, kind: Any) -> Any:
    kind_name = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    try:
        if kind_name in ("bool", bool):
            if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
                return value.strip().lower() in ("true", "1")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind_name in ("int", int):
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if kind_name in ("float", float):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind_name in ("str", str):
            if not isinstance(value, (str, int, float)):
                raise ValueError
            return str(value)
        if kind_name.startswith("tuple"):
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError
            return tuple(value)
        if kind_name.startswith("Mapping") and get_args(kind) == (str, str):
            return _str_mapping(value)
        if kind_name.startswith("Mapping"):
            if not isinstance(value, Mapping):
                raise ValueError
            return {k: dict(v) for k, v in value.items()}
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {kind_name.split('[')[0]}, got {value!r}") from None
    return value


def _str_mapping(value: Any) -> dict[str, str]:
    """A TOML table of strings, or the environment's "user:token,user:token" form (which
    names the user first, as people write it; the result maps token → user)."""
    if isinstance(value, str):
        pairs = [item.strip().partition(":") for item in value.split(",") if item.strip()]
        if any(not user.strip() or not sep or not token.strip() for user, sep, token in pairs):
            raise ValueError
        return {token.strip(): user.strip() for user, _, token in pairs}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError
    return dict(value)


_CLASSES: dict[str, type] = {"server": ServerConfig, "store": StoreConfig, "workers": WorkersConfig,
                              "jobs": JobsConfig, "auth": AuthConfig, "limits": LimitsConfig,
                              "retention": RetentionConfig, "stats": StatsConfig, "metrics": MetricsConfig}


def _section(name: str, values: Mapping[str, Any], origin: str) -> Any:
    cls = _CLASSES[name]
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    out = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{origin}: unknown key [{name}] {key!r} (known: {', '.join(sorted(known))})")
        out[key] = _coerce(f"{origin}: [{name}] {key}", value, hints[key])
    return out


def _from_environment(environ: Mapping[str, str], layers: dict[str, dict[str, Any]],
                      sources: Sources | None = None) -> None:
    """Apply the `OFFLOAD_*` variables to `layers`. One that names no setting is logged as
    a warning and ignored (see the module's docstring); a setting with a bad value stops
    start-up."""
    for var, value in sorted(environ.items()):
        if not var.startswith("OFFLOAD_") or var in CLIENT_VARIABLES:
            continue
        if var.startswith(_SETTINGS_PREFIX):
            where = _job_setting(var, value, layers["jobs"])
            if sources is not None:
                sources[f"jobs.settings.{where}"] = f"environment {var}"
            continue
        name, _, key = var[len("OFFLOAD_"):].lower().partition("_")
        if name not in _SECTIONS:
            log.warning("ignoring environment variable %s: it names no offload setting "
                        "(settings are OFFLOAD_<SECTION>_<KEY>, e.g. OFFLOAD_SERVER_PORT; sections: %s)",
                        var, ", ".join(_SECTIONS))
            continue
        known = {f.name for f in fields(_CLASSES[name])}
        if key not in known:
            log.warning("ignoring environment variable %s: [%s] has no key %r (known: %s)",
                        var, name, key, ", ".join(sorted(known)))
            continue
        layers[name].update(_section(name, {key: value}, f"environment {var}"))
        if sources is not None:
            sources[f"{name}.{key}"] = f"environment {var}"


def _job_setting(var: str, value: str, jobs: dict[str, Any]) -> str:
    """`OFFLOAD_JOBS_SETTINGS_<TYPE>_<KEY>`: one key of `[jobs.settings.<type>]`. The type is
    the longest one already configured whose name (`.` and `-` written as `_`) fits, else the
    first word; the value takes the type of the value it replaces."""
    settings = {t: dict(v) for t, v in jobs.get("settings", JobsConfig().settings).items()}
    rest = var[len(_SETTINGS_PREFIX):].lower()
    fits = [t for t in settings if rest.startswith(re.sub(r"[.-]", "_", t.lower()) + "_")]
    job_type = max(fits, key=len) if fits else rest.partition("_")[0]
    key = rest[len(job_type) + 1:]
    if not job_type or not key:
        raise ConfigError(f"environment {var}: expected OFFLOAD_JOBS_SETTINGS_<TYPE>_<KEY>, "
                          "e.g. OFFLOAD_JOBS_SETTINGS_PDF_CURRENCY")
    table = settings.setdefault(job_type, {})
    table[key] = _setting_value(f"environment {var}: [jobs.settings.{job_type}] {key}", value, table.get(key))
    jobs["settings"] = settings
    return f"{job_type}.{key}"


_BOOLEANS = {"true": True, "false": False}
_NUMBER = re.compile(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?")


def _setting_value(where: str, value: str, current: Any) -> Any:
    """The variable's text as the type of the value it replaces; for a new key, a number
    when it reads as one, true/false as a boolean, otherwise the text itself."""
    text = value.strip()
    if current is None:
        if _NUMBER.fullmatch(text):
            return int(text) if text.lstrip("+-").isdigit() else float(text)
        return _BOOLEANS.get(text.lower(), value)
    try:
        if isinstance(current, bool):
            return _BOOLEANS[text.lower()]
        if isinstance(current, (int, float)):
            return type(current)(text)
    except (KeyError, ValueError):
        raise ConfigError(f"{where}: expected {type(current).__name__}, got {value!r}") from None
    return value


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Build the configuration. `path` defaults to `./config.toml` when that exists."""
    return load_config_sources(path, environ=environ, overrides=overrides)[0]


def load_config_sources(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[Config, Sources]:
    """`load_config`, and where each value set anywhere came from (`Sources`; a key it does
    not name has its default). For `offload config`."""
    environ = os.environ if environ is None else environ
    layers: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    sources: Sources = {}
    schedules: tuple[ScheduleConfig, ...] = ()
    base_dir = Path.cwd()
    if path is None and Path("config.toml").is_file():
        path = "config.toml"
    if path is not None:
        file = Path(path).expanduser().resolve()
        try:
            raw = tomllib.loads(file.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {str(file)!r} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from None
        base_dir = file.parent
        for name, values in raw.items():
            if name == "schedules":
                schedules = _schedules(values, str(file))
                sources["schedules"] = f"file {file}"
                continue
            if name not in _SECTIONS or not isinstance(values, dict):
                raise ConfigError(f"{file}: unknown section [{name}] (known: {', '.join(_SECTIONS)}, [[schedules]])")
            layers[name].update(_section(name, values, str(file)))
            for key, value in values.items():
                if name == "jobs" and key == "settings" and isinstance(value, Mapping):
                    sources.update({f"jobs.settings.{t}.{k}": f"file {file}"
                                    for t, table in value.items() if isinstance(table, Mapping) for k in table})
                else:
                    sources[f"{name}.{key}"] = f"file {file}"
    _from_environment(environ, layers, sources)
    for name, values in (overrides or {}).items():
        layers[name].update(_section(name, values, "command line"))
        sources.update({f"{name}.{key}": "flag" for key in values})
    _resolve_pdf_paths(layers["jobs"], base_dir)
    _resolve_email_paths(layers["jobs"], base_dir)
    _resolve_export_paths(layers["jobs"], base_dir)
    try:
        cfg = Config(
            server=ServerConfig(**layers["server"]),
            store=StoreConfig(**layers["store"]),
            workers=WorkersConfig(**layers["workers"]),
            jobs=JobsConfig(**layers["jobs"]),
            auth=AuthConfig(**layers["auth"]),
            limits=LimitsConfig(**layers["limits"]),
            schedules=schedules,
            retention=RetentionConfig(**layers["retention"]),
            stats=StatsConfig(**layers["stats"]),
            metrics=MetricsConfig(**layers["metrics"]),
            base_dir=base_dir,
        )
    except TypeError as exc:  # pragma: no cover - guarded by _section
        raise ConfigError(str(exc)) from None
    validate(cfg)
    return cfg, sources


_SCHEDULE_KEYS = {f.name for f in fields(ScheduleConfig)}
_SCHEDULE_REQUIRED = ("name", "cron", "type")


def _schedules(raw: Any, origin: str) -> tuple[ScheduleConfig, ...]:
    """`[[schedules]]`: each table's shape, its cron line and its time zone. The job type and
    its data are checked against the loaded job types later (`schedules.check`), since the
    types are known only once `[workers] modules` are imported."""
    from offload.service.schedules import CronError, parse_cron  # the schedules own their cron rules

    if not isinstance(raw, list) or not all(isinstance(table, dict) for table in raw):
        raise ConfigError(f"{origin}: schedules must be written as [[schedules]] tables")
    out: list[ScheduleConfig] = []
    for index, table in enumerate(raw):
        label = f"{origin}: [[schedules]] #{index + 1}"
        name = table.get("name")
        if isinstance(name, str) and _SCHEDULE_NAME.match(name):
            label = f"{origin}: [[schedules]] {name!r}"
        elif "name" in table:
            raise ConfigError(f"{label}: name: must be 1 to 64 letters, digits, '.', '_' or '-', got {name!r}")
        unknown = sorted(set(table) - _SCHEDULE_KEYS)
        if unknown:
            raise ConfigError(f"{label}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_SCHEDULE_KEYS))})")
        for key in _SCHEDULE_REQUIRED:
            if key not in table:
                raise ConfigError(f"{label}: {key}: is required")
        for key in ("name", "cron", "type", "timezone", "catch_up", "user"):
            if key in table and not isinstance(table[key], str):
                raise ConfigError(f"{label}: {key}: expected a string, got {table[key]!r}")
        if "options" in table and not isinstance(table["options"], dict):
            raise ConfigError(f"{label}: options: expected a table, got {table['options']!r}")
        schedule = ScheduleConfig(**table)
        if schedule.catch_up not in CATCH_UP:
            raise ConfigError(f"{label}: catch_up: must be \"one\" (run the latest missed slot once) or \"skip\", "
                              f"got {schedule.catch_up!r}")
        try:
            parse_cron(schedule.cron, schedule.timezone)
        except CronError as exc:
            raise ConfigError(f"{label}: {exc.field}: {exc}") from None
        if any(s.name == schedule.name for s in out):
            raise ConfigError(f"{label}: name: another schedule is called {schedule.name!r}")
        out.append(schedule)
    return tuple(out)


def metrics_address(listen: str) -> tuple[str, int]:
    """`[metrics] listen` as (host, port); ValueError naming the problem."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{listen!r} is not host:port, e.g. \"127.0.0.1:9464\"")
    from offload.service.auth import is_loopback  # here, not at the top: auth reads Config

    if not is_loopback(host):
        raise ValueError(f"{host!r} is not a loopback address: the metrics listener has no token, "
                         "so it listens on 127.0.0.1, ::1 or localhost only")
    return host, int(port)


def metrics_listen_error(listen: str) -> str | None:
    if not listen:
        return None
    try:
        metrics_address(listen)
    except ValueError as exc:
        return str(exc)
    return None


def validate(cfg: Config) -> None:
    checks = [
        (0 < cfg.server.port < 65536, "[server] port must be between 1 and 65535"),
        (cfg.server.shutdown_grace >= 0, "[server] shutdown_grace must be >= 0"),
        (cfg.server.log_format in ("text", "json"), "[server] log_format must be text or json"),
        (cfg.workers.processes >= 0, "[workers] processes must be >= 0 (0 = one per CPU)"),
        (cfg.workers.min_processes >= -1, "[workers] min_processes must be >= 0 (or -1 for all)"),
        (cfg.workers.idle_timeout > 0, "[workers] idle_timeout must be > 0"),
        (cfg.workers.stop_grace >= 0, "[workers] stop_grace must be >= 0"),
        (cfg.workers.async_concurrency > 0, "[workers] async_concurrency must be > 0"),
        (cfg.workers.memory_limit_mb >= 0, "[workers] memory_limit_mb must be >= 0"),
        (cfg.workers.start_method in ("forkserver", "spawn", "fork"), "[workers] start_method must be forkserver, spawn or fork"),
        (0 <= cfg.jobs.max_retries <= 10, "[jobs] max_retries must be between 0 and 10"),
        (cfg.jobs.retry_delay_ms >= 0, "[jobs] retry_delay_ms must be >= 0"),
        (cfg.jobs.timeout_ms > 0, "[jobs] timeout_ms must be > 0"),
        (cfg.jobs.max_pending > 0, "[jobs] max_pending must be > 0"),
        (cfg.jobs.lease_ms >= 1000, "[jobs] lease_ms must be >= 1000"),
        (cfg.store.synchronous.upper() in ("NORMAL", "FULL"), "[store] synchronous must be NORMAL or FULL"),
        (bool(re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", cfg.store.schema)),
         "[store] schema must be a lower-case SQL name (letters, digits, _), at most 63 characters"),
        (1 <= cfg.store.pool_min <= cfg.store.pool_max, "[store] pool_min must be >= 1 and <= pool_max"),
        (cfg.store.poll_ms >= 50, "[store] poll_ms must be >= 50"),
        (cfg.limits.max_body_bytes >= 1024, "[limits] max_body_bytes must be >= 1024"),
        (cfg.limits.max_json_depth >= 1, "[limits] max_json_depth must be >= 1"),
        (cfg.limits.submit_rate > 0, "[limits] submit_rate must be > 0"),
        (cfg.limits.submit_burst >= 1, "[limits] submit_burst must be >= 1"),
        (cfg.limits.max_batch_jobs >= 1, "[limits] max_batch_jobs must be >= 1"),
        (cfg.limits.max_after >= 1, "[limits] max_after must be >= 1"),
        (cfg.limits.max_pending_per_user >= 0, "[limits] max_pending_per_user must be >= 0 (0 = no cap)"),
        (cfg.limits.max_websockets_per_user >= 1, "[limits] max_websockets_per_user must be >= 1"),
        (cfg.limits.max_ws_message_bytes >= 1024, "[limits] max_ws_message_bytes must be >= 1024"),
        (cfg.limits.ws_max_unsent_bytes >= 65536, "[limits] ws_max_unsent_bytes must be >= 65536"),
        (cfg.limits.ws_slow_close_s >= 0, "[limits] ws_slow_close_s must be >= 0"),
        (cfg.limits.max_upload_bytes >= 1024, "[limits] max_upload_bytes must be >= 1024"),
        (cfg.limits.max_inline_upload_bytes >= 1024, "[limits] max_inline_upload_bytes must be >= 1024"),
        (cfg.stats.interval_s >= 0.05, "[stats] interval_s must be >= 0.05"),
        (cfg.stats.window_s > 0, "[stats] window_s must be > 0"),
        (cfg.stats.window_samples >= 1, "[stats] window_samples must be >= 1"),
        (cfg.stats.cache_ms >= 0, "[stats] cache_ms must be >= 0"),
        (metrics_listen_error(cfg.metrics.listen) is None, f"[metrics] listen: {metrics_listen_error(cfg.metrics.listen)}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    _validate_retention(cfg.retention)
    _validate_pdf_settings(cfg)
    _validate_email_settings(cfg)
    _validate_image_settings(cfg)
    _validate_export_settings(cfg)
    from offload.service.auth import Authenticator  # here, not at the top: auth reads Config

    auth = Authenticator.from_config(cfg)  # unreadable tokens, or no tokens on a public address
    unknown = sorted(set(cfg.auth.admins) - auth.users)
    if unknown and not auth.single_user:
        raise ConfigError(f"[auth] admins: no token is configured for {', '.join(map(repr, unknown))} "
                          f"(users with tokens: {', '.join(sorted(auth.users))})")
    for schedule in cfg.schedules:
        label = f"[[schedules]] {schedule.name!r}: user"
        if auth.single_user and schedule.user not in ("", "local"):
            raise ConfigError(f"{label}: single-user mode (no [auth] tokens) has the one user \"local\"; "
                              f"jobs of {schedule.user!r} would be seen by nobody")
        if not auth.single_user and not schedule.user:
            raise ConfigError(f"{label}: is required when [auth] tokens are configured: who owns its jobs")
        if not auth.single_user and schedule.user not in auth.users:
            raise ConfigError(f"{label}: no token is configured for {schedule.user!r} "
                              f"(users with tokens: {', '.join(sorted(auth.users))})")


def _validate_retention(retention: RetentionConfig) -> None:
    for key in ("completed", "failed", "cancelled", "results"):
        retention.ms(key)  # ConfigError naming the key
    interval = retention.ms("interval")
    if interval is None or interval < 1000:
        raise ConfigError(f"[retention] interval must be at least 1s (write it like {DURATION_EXAMPLES})")
    if retention.batch < 1:
        raise ConfigError("[retention] batch must be >= 1")


def _resolve_pdf_paths(jobs: dict[str, Any], base_dir: Path) -> None:
    """`[jobs.settings.pdf]` names files (the seller's logo, fonts): relative to the config
    file's folder, as every path here is, whatever the worker's working directory."""
    settings = jobs.get("settings")
    if isinstance(settings, Mapping) and isinstance(settings.get("pdf"), Mapping):
        from offload.workers.invoice_data import resolve_paths

        jobs["settings"] = {**settings, "pdf": resolve_paths(settings["pdf"], base_dir)}


def _validate_pdf_settings(cfg: Config) -> None:
    """`[jobs.settings.pdf]` belongs to the built-in invoice type, which reads it again at every
    submission and in every job: a bad value stops start-up here instead of failing them all."""
    from offload.workers.invoice_data import InvoiceSettings  # the worker side owns its settings' rules
    from offload.workers.report_data import ReportSettings

    try:
        InvoiceSettings.from_settings(cfg.jobs.settings.get("pdf", {}))
        ReportSettings.from_settings(cfg.jobs.settings.get("pdf", {}))
    except ValueError as exc:
        raise ConfigError(f"[jobs.settings.pdf] {exc}") from None


# ---- [jobs.settings.email] ------------------------------------------------------------------------
def _resolve_email_paths(jobs: dict[str, Any], base_dir: Path) -> None:
    """`password_file` and `ca_file` of `[jobs.settings.email]`, relative to the config file's folder."""
    settings = jobs.get("settings")
    if isinstance(settings, Mapping) and isinstance(settings.get("email"), Mapping):
        from offload.workers.email_settings import resolve_paths

        jobs["settings"] = {**settings, "email": resolve_paths(settings["email"], base_dir)}


def _validate_email_settings(cfg: Config) -> None:
    """A bad `[jobs.settings.email]`, or a password it names that is not there, stops start-up
    instead of failing every email job. The message names the variable or file, never a value."""
    from offload.workers.email_settings import EmailSettings  # the worker side owns its settings' rules

    if "email" not in cfg.jobs.settings:
        return
    try:
        EmailSettings.from_settings(cfg.jobs.settings["email"]).password()
    except (ValueError, LookupError) as exc:
        raise ConfigError(f"[jobs.settings.email] {exc}") from None


def _validate_image_settings(cfg: Config) -> None:
    """`[jobs.settings.image]`, read at every image submission and job: checked once, here."""
    from offload.workers.image_spec import ImageSettings

    try:
        ImageSettings.from_settings(cfg.jobs.settings.get("image", {}))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _resolve_export_paths(jobs: dict[str, Any], base_dir: Path) -> None:
    """`[jobs.settings.export] database`, a SQLite file, relative to the config file's folder."""
    settings = jobs.get("settings")
    if isinstance(settings, Mapping) and isinstance(settings.get("export"), Mapping):
        from offload.workers.export_data import resolve_database

        jobs["settings"] = {**settings, "export": resolve_database(settings["export"], base_dir)}


def _validate_export_settings(cfg: Config) -> None:
    """`[jobs.settings.export]`: its named queries and limits, checked once at start-up."""
    from offload.workers.export_data import ExportSettings  # the worker side owns its settings' rules

    try:
        ExportSettings.from_settings(cfg.jobs.settings.get("export", {}))
    except ValueError as exc:
        raise ConfigError(f"[jobs.settings.export] {exc}") from None
