//! Configuration: command-line flags, each with its environment variable.
//!
//! `minichat-server --help` lists them all. Parsing turns them into [`Settings`], the plain
//! struct the server runs on; an embedding application builds `Settings` directly. A bad value
//! stops the binary with one line naming the setting (clap's own error for unparsable values).

use crate::auth::AuthMode;
use clap::{Parser, Subcommand, ValueEnum};
use minichat_core::ChatConfig;
use std::fmt::{self, Display};
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// Minichat: a real-time chat server (REST + WebSocket).
#[derive(Debug, Parser)]
#[command(name = "minichat-server", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub options: Options,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply the PostgreSQL migrations and exit (needs DATABASE_URL).
    Migrate {
        /// First create the database DATABASE_URL names, if it does not exist (connecting to
        /// the server's `postgres` database with the same user).
        #[arg(long)]
        create_database: bool,
    },
    /// Print a token for an existing user (or an admin token), signed with MINICHAT_JWT_SECRET.
    Token {
        /// The user the token acts as.
        #[arg(long, required_unless_present = "admin", conflicts_with = "admin")]
        user_id: Option<i64>,
        /// An admin token instead: creates users when MINICHAT_SIGNUP=admin; acts as no user.
        #[arg(long)]
        admin: bool,
        /// Lifetime of the token, in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl_secs: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Signup {
    /// Anyone may create a user (and gets its token).
    Open,
    /// Creating users needs an admin token (`minichat-server token --admin`).
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Address to listen on.
    #[arg(long, env = "MINICHAT_BIND", default_value_t = Settings::default().bind, value_parser = address, global = true)]
    pub bind: SocketAddr,

    /// PostgreSQL URL (postgresql://user:pass@host:5432/db, or a primary and standbys:
    /// postgresql://user:pass@h1:5432,h2:5432/db?target_session_attrs=read-write); unset keeps
    /// data in memory.
    #[arg(long, env = "DATABASE_URL", value_parser = postgres_url, global = true)]
    pub database_url: Option<String>,

    /// Maximum PostgreSQL connections of this node.
    #[arg(long, env = "MINICHAT_DATABASE_POOL_SIZE", default_value_t = ChatConfig::default().database_pool_size, value_parser = at_least_one::<usize>, global = true)]
    pub database_pool_size: usize,

    /// Redis URL (redis://host:6379); unset keeps fan-out and the cache in this process.
    #[arg(long, env = "REDIS_URL", value_parser = redis_url, global = true)]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key and channel.
    #[arg(long, env = "MINICHAT_REDIS_PREFIX", default_value_t = ChatConfig::default().redis_prefix, global = true)]
    pub redis_prefix: String,

    /// Access control: `token` (JWT bearer tokens) or `off` (the original's open behaviour).
    #[arg(long, env = "MINICHAT_AUTH", value_enum, default_value_t = Settings::default().auth, global = true)]
    pub auth: AuthMode,

    /// HS256 secret shared by all nodes; unset makes a random one per process.
    #[arg(
        long,
        env = "MINICHAT_JWT_SECRET",
        hide_env_values = true,
        value_parser = secret,
        global = true
    )]
    pub jwt_secret: Option<String>,

    /// Allowed CORS origins (like `https://chat.example.com`), comma separated, or `*` for any.
    #[arg(long, env = "MINICHAT_CORS_ORIGINS", default_value_t = Settings::default().cors, value_parser = CorsOrigins::from_setting, global = true)]
    pub cors_origins: CorsOrigins,

    /// Largest request body accepted, in bytes (larger: 413).
    #[arg(long, env = "MINICHAT_MAX_BODY_BYTES", default_value_t = Limits::DEFAULT.max_body_bytes, value_parser = whole::<usize>, global = true)]
    pub max_body_bytes: usize,

    /// Largest request head accepted: its header fields, `name: value` and a line end each, in
    /// bytes (larger: 431).
    #[arg(long, env = "MINICHAT_MAX_HEADER_BYTES", default_value_t = Limits::DEFAULT.max_header_bytes, value_parser = header_bytes, global = true)]
    pub max_header_bytes: usize,

    /// Largest WebSocket message accepted, in bytes (larger: close 1009).
    #[arg(long, env = "MINICHAT_MAX_WS_MESSAGE_BYTES", default_value_t = Limits::DEFAULT.max_ws_message_bytes, value_parser = whole::<usize>, global = true)]
    pub max_ws_message_bytes: usize,

    /// Seconds a client has to send a request's headers; also how long an idle keep-alive
    /// connection is kept waiting for its next request.
    #[arg(long, env = "MINICHAT_HEADER_READ_TIMEOUT_SECS", default_value_t = Limits::DEFAULT.header_read_timeout.as_secs(), value_parser = at_least_one::<u64>, global = true)]
    pub header_read_timeout_secs: u64,

    /// Messages a user may send per second, on average (REST and socket together).
    #[arg(long, env = "MINICHAT_SEND_RATE", default_value_t = Limits::DEFAULT.send_rate_per_sec, value_parser = at_least_one::<u32>, global = true)]
    pub send_rate: u32,

    /// Messages a user may send in a burst above the rate.
    #[arg(long, env = "MINICHAT_SEND_BURST", default_value_t = Limits::DEFAULT.send_burst, value_parser = at_least_one::<u32>, global = true)]
    pub send_burst: u32,

    /// Typing, read and watch frames a user may send per second, on average.
    #[arg(long, env = "MINICHAT_SIGNAL_RATE", default_value_t = Limits::DEFAULT.signal_rate_per_sec, value_parser = at_least_one::<u32>, global = true)]
    pub signal_rate: u32,

    /// Typing, read and watch frames a user may send in a burst above the rate.
    #[arg(long, env = "MINICHAT_SIGNAL_BURST", default_value_t = Limits::DEFAULT.signal_burst, value_parser = at_least_one::<u32>, global = true)]
    pub signal_burst: u32,

    /// Open WebSockets allowed per user on one node.
    #[arg(long, env = "MINICHAT_MAX_SOCKETS_PER_USER", default_value_t = Limits::DEFAULT.max_sockets_per_user, value_parser = whole::<usize>, global = true)]
    pub max_sockets_per_user: usize,

    /// Open WebSockets allowed on one node.
    #[arg(long, env = "MINICHAT_MAX_SOCKETS", default_value_t = Limits::DEFAULT.max_sockets, value_parser = whole::<usize>, global = true)]
    pub max_sockets: usize,

    /// Who may create users: `open` (anyone) or `admin` (an admin token is needed).
    #[arg(long, env = "MINICHAT_SIGNUP", value_enum, default_value_t = Settings::default().signup, global = true)]
    pub signup: Signup,

    /// Seconds a WebSocket may stay silent before the server pings it; three times that with no
    /// frame at all and it is closed as dead.
    #[arg(long, env = "MINICHAT_WS_PING_SECS", default_value_t = Limits::DEFAULT.ws_ping_interval.as_secs(), value_parser = at_least_one::<u64>, global = true)]
    pub ws_ping_secs: u64,

    /// Milliseconds one backend call may take (a PostgreSQL call with its transaction, one Redis
    /// command) before it fails as unavailable (503); `/health` checks each backend within
    /// 1000 ms or this, if shorter.
    #[arg(long, env = "MINICHAT_BACKEND_TIMEOUT_MS", default_value_t = millis(ChatConfig::default().backend_timeout), value_parser = at_least_one::<u64>, global = true)]
    pub backend_timeout_ms: u64,

    /// Members per group conversation, its creator included.
    #[arg(long, env = "MINICHAT_MAX_GROUP_MEMBERS", default_value_t = ChatConfig::default().max_group_members, value_parser = at_least_one::<usize>, global = true)]
    pub max_group_members: usize,

    /// Events queued per WebSocket connection before it is closed as a slow consumer.
    #[arg(long, env = "MINICHAT_WS_QUEUE", default_value_t = ChatConfig::default().queue_capacity, value_parser = at_least_one::<usize>, global = true)]
    pub ws_queue: usize,

    /// Kernel send buffer of each WebSocket, in bytes (Linux reserves twice this): what a client
    /// that stops reading can leave unsent before its writes stall.
    #[arg(long, env = "MINICHAT_WS_SEND_BUFFER_BYTES", default_value_t = Limits::DEFAULT.ws_send_buffer_bytes, value_parser = at_least_one::<usize>, global = true)]
    pub ws_send_buffer_bytes: usize,

    /// Milliseconds one WebSocket write may stall (the client not reading) before the socket is
    /// closed as a slow consumer.
    #[arg(long, env = "MINICHAT_WS_WRITE_STALL_MS", default_value_t = millis(Limits::DEFAULT.ws_write_stall), value_parser = at_least_one::<u64>, global = true)]
    pub ws_write_stall_ms: u64,

    /// Log format: human-readable `text`, or `json`.
    #[arg(long, env = "MINICHAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

// ---- value parsers: each error is the "expected ..." part of the one line --------------------

fn address(raw: &str) -> Result<SocketAddr, String> {
    raw.trim().parse().map_err(|_| {
        "expected an IP address and port, like 127.0.0.1:8000 (or 0.0.0.0:8000 in a container)"
            .to_owned()
    })
}

/// A whole number (`min` or more).
fn number<T: FromStr + PartialOrd + Display>(raw: &str, min: T) -> Result<T, String> {
    match raw.trim().parse::<T>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(format!("expected a whole number of at least {min}")),
    }
}

fn whole<T: FromStr + PartialOrd + Display + From<u8>>(raw: &str) -> Result<T, String> {
    number(raw, T::from(0))
}

fn at_least_one<T: FromStr + PartialOrd + Display + From<u8>>(raw: &str) -> Result<T, String> {
    number(raw, T::from(1))
}

/// `MINICHAT_MAX_HEADER_BYTES`: below 1 KiB, ordinary requests would not fit.
fn header_bytes(raw: &str) -> Result<usize, String> {
    number(raw, 1024)
}

/// A duration as whole milliseconds (a flag's default), clamped.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The scheme of a URL-shaped value (`scheme://...`), lowercased.
fn scheme(raw: &str) -> Option<String> {
    raw.split_once("://").map(|(s, _)| s.to_ascii_lowercase())
}

/// Empty counts as unset (in memory). Other forms are checked when connecting.
fn postgres_url(raw: &str) -> Result<String, String> {
    match scheme(raw) {
        Some(s) if s != "postgres" && s != "postgresql" => Err(format!(
            "a {s}:// URL is not a PostgreSQL one; expected postgresql://user:password@host:5432/dbname"
        )),
        _ => Ok(raw.trim().to_owned()),
    }
}

/// Empty counts as unset (in process). Other forms are checked when connecting.
fn redis_url(raw: &str) -> Result<String, String> {
    const SCHEMES: &[&str] = &["redis", "rediss", "redis+unix", "unix", "valkey", "valkeys"];
    // Several URLs, comma-separated, are the seed nodes of a Redis Cluster; the core checks
    // the rest of each.
    for url in raw.split(',') {
        match scheme(url.trim()) {
            Some(s) if !SCHEMES.contains(&s.as_str()) => {
                return Err(format!(
                    "a {s}:// URL is not a Redis one; expected redis://host:6379[/db], or several redis:// URLs separated by commas for a Redis Cluster"
                ))
            }
            _ => {}
        }
    }
    Ok(raw.trim().to_owned())
}

fn secret(raw: &str) -> Result<String, String> {
    if raw.is_empty() {
        Err("expected a non-empty secret shared by every node (unset the variable for a random one per process)".into())
    } else {
        Ok(raw.to_owned())
    }
}

/// Limits that keep one client from hurting the rest.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// A request's header fields, counted as `name: value\r\n` each (see
    /// [`Limits::hyper_head_buffer`] for what hyper itself allows).
    pub max_header_bytes: usize,
    pub max_ws_message_bytes: usize,
    /// Time to send a request's headers, counted from when the connection is ready for one:
    /// so it also closes idle keep-alive connections.
    pub header_read_timeout: Duration,
    /// Average messages per second per user, and the burst above it.
    pub send_rate_per_sec: u32,
    pub send_burst: u32,
    /// The same for typing, read and watch frames.
    pub signal_rate_per_sec: u32,
    pub signal_burst: u32,
    /// How long a socket may stay silent before it is pinged; three times that and it is closed.
    pub ws_ping_interval: Duration,
    /// A WebSocket's kernel send buffer (`SO_SNDBUF`; Linux reserves twice this), and how long
    /// one write may stall before the socket is closed as a slow consumer.
    pub ws_send_buffer_bytes: usize,
    pub ws_write_stall: Duration,
    /// Open WebSockets per user on one node, and in all on one node.
    pub max_sockets_per_user: usize,
    pub max_sockets: usize,
    /// How long in-flight requests get to finish at shutdown.
    pub shutdown_grace: Duration,
}

impl Limits {
    /// The defaults: the one place they are written (the flags' defaults come from here).
    pub const DEFAULT: Limits = Limits {
        max_body_bytes: 64 * 1024,
        max_header_bytes: 64 * 1024,
        max_ws_message_bytes: 64 * 1024,
        header_read_timeout: Duration::from_secs(10),
        ws_ping_interval: Duration::from_secs(30),
        ws_send_buffer_bytes: 32 * 1024,
        ws_write_stall: Duration::from_secs(10),
        send_rate_per_sec: 30,
        send_burst: 100,
        signal_rate_per_sec: 10,
        signal_burst: 30,
        max_sockets_per_user: 16,
        max_sockets: 10_000,
        shutdown_grace: Duration::from_secs(10),
    };
}

impl Limits {
    /// The head hyper reads before the server sees a request: twice
    /// [`max_header_bytes`](Limits::max_header_bytes) (and at least hyper's minimum, 8 KiB), so
    /// that a head over the limit but under this reaches the server, which answers 431 with a
    /// `detail`; hyper answers a bigger one itself, with an empty 431.
    pub fn hyper_head_buffer(&self) -> usize {
        self.max_header_bytes.saturating_mul(2).max(8 * 1024)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Which origins may call the API from a browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    Any,
    List(Vec<String>),
}

impl CorsOrigins {
    /// Parses `MINICHAT_CORS_ORIGINS`, refusing what no browser would ever send as an `Origin`:
    /// each entry must be `*` or exactly `scheme://host[:port]`, as browsers write it.
    pub fn from_setting(raw: &str) -> Result<CorsOrigins, String> {
        const EXPECTED: &str =
            "expected `*` or origins like https://chat.example.com, comma separated";
        if raw.trim().is_empty() {
            return Err(format!("empty; {EXPECTED}"));
        }
        for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "*" {
                continue;
            }
            let origin = url::Url::parse(entry)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .map(|u| u.origin().ascii_serialization())
                .filter(|o| o != "null");
            match origin {
                Some(o) if o == entry => {}
                Some(o) => {
                    return Err(format!(
                        "`{entry}` is not an origin as browsers send it (write `{o}`); {EXPECTED}"
                    ))
                }
                None => return Err(format!("`{entry}` is not an http(s) origin; {EXPECTED}")),
            }
        }
        Ok(CorsOrigins::parse(raw))
    }

    /// Parses a comma-separated list leniently (an empty list or a `*` is any origin).
    pub fn parse(raw: &str) -> CorsOrigins {
        let list: Vec<String> = raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if list.is_empty() || list.iter().any(|o| o == "*") {
            CorsOrigins::Any
        } else {
            CorsOrigins::List(list)
        }
    }
}

impl Display for CorsOrigins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CorsOrigins::Any => f.write_str("*"),
            CorsOrigins::List(list) => f.write_str(&list.join(",")),
        }
    }
}

/// Everything the server runs on.
#[derive(Debug, Clone)]
/// `Default` is the one place the defaults of these fields are written.
pub struct Settings {
    pub bind: SocketAddr,
    pub auth: AuthMode,
    pub jwt_secret: Option<String>,
    pub signup: Signup,
    pub cors: CorsOrigins,
    pub limits: Limits,
    pub chat: ChatConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bind: SocketAddr::from(([127, 0, 0, 1], 8000)),
            auth: AuthMode::Token,
            jwt_secret: None,
            signup: Signup::Open,
            cors: CorsOrigins::Any,
            limits: Limits::default(),
            chat: ChatConfig::default(),
        }
    }
}

impl Options {
    pub fn settings(&self) -> Settings {
        Settings {
            bind: self.bind,
            auth: self.auth,
            jwt_secret: self.jwt_secret.clone().filter(|s| !s.is_empty()),
            signup: self.signup,
            cors: self.cors_origins.clone(),
            limits: Limits {
                max_body_bytes: self.max_body_bytes,
                max_header_bytes: self.max_header_bytes,
                max_ws_message_bytes: self.max_ws_message_bytes,
                header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
                ws_ping_interval: Duration::from_secs(self.ws_ping_secs),
                ws_send_buffer_bytes: self.ws_send_buffer_bytes,
                ws_write_stall: Duration::from_millis(self.ws_write_stall_ms),
                send_rate_per_sec: self.send_rate,
                send_burst: self.send_burst,
                signal_rate_per_sec: self.signal_rate,
                signal_burst: self.signal_burst,
                max_sockets_per_user: self.max_sockets_per_user,
                max_sockets: self.max_sockets,
                ..Limits::default()
            },
            chat: ChatConfig {
                database_url: self.database_url.clone().filter(|s| !s.is_empty()),
                database_pool_size: self.database_pool_size,
                redis_url: self.redis_url.clone().filter(|s| !s.is_empty()),
                redis_prefix: self.redis_prefix.clone(),
                queue_capacity: self.ws_queue,
                max_group_members: self.max_group_members,
                backend_timeout: Duration::from_millis(self.backend_timeout_ms),
                ..ChatConfig::default()
            },
        }
    }
}

// ---- one line per bad setting ------------------------------------------------------------------

/// How a setting is named in an error line: `MINICHAT_AUTH (--auth)`, or `--ttl-secs` for a
/// flag without a variable. `key` is the environment variable or the long flag.
pub fn setting_name(key: &str) -> String {
    use clap::CommandFactory;
    let command = Cli::command();
    let all = command
        .get_arguments()
        .chain(command.get_subcommands().flat_map(|c| c.get_arguments()));
    for arg in all {
        let env = arg.get_env().and_then(|e| e.to_str());
        let long = arg.get_long();
        if env == Some(key) || long == Some(key.trim_start_matches("--")) {
            return match (env, long) {
                (Some(env), Some(long)) => format!("{env} (--{long})"),
                (None, Some(long)) => format!("--{long}"),
                (Some(env), None) => env.to_owned(),
                (None, None) => key.to_owned(),
            };
        }
    }
    key.to_owned()
}

/// A value as it may be printed: every password in it is masked. That is the password of each
/// `scheme://user:password@` (also in a multi-host PostgreSQL URL, `postgresql://u:pw@h1,h2/db`,
/// which is no valid single URL, and in a comma-separated list of URLs), and every
/// `password=...` (a URL's query parameter, or a key=value connection string's field).
pub fn shown_value(value: &str) -> String {
    const MASK: &str = "***";
    let mut shown = String::with_capacity(value.len());
    let mut rest = value;
    // Userinfo passwords: `://` then the authority, up to the next `/`, `?` or `#`.
    while let Some(at) = rest.find("://") {
        let start = at + 3;
        shown.push_str(&rest[..start]);
        let after = &rest[start..];
        let authority = &after[..after.find(['/', '?', '#']).unwrap_or(after.len())];
        // The userinfo ends at the authority's last `@` before the next URL of a list.
        let this_url = &authority[..authority.find("://").unwrap_or(authority.len())];
        let userinfo_end = this_url.rfind('@');
        let colon = userinfo_end.and_then(|end| this_url[..end].find(':'));
        match (userinfo_end, colon) {
            (Some(end), Some(colon)) => {
                shown.push_str(&after[..=colon]);
                shown.push_str(MASK);
                rest = &after[end..];
            }
            _ => rest = after,
        }
    }
    shown.push_str(rest);
    // `password=...` fields: up to `&` (URL query) or white space (key=value), or quoted.
    let mut masked = String::with_capacity(shown.len());
    let mut rest = shown.as_str();
    while let Some(at) = rest.to_ascii_lowercase().find("password=") {
        let start = at + "password=".len();
        masked.push_str(&rest[..start]);
        let after = &rest[start..];
        let end = if let Some(quoted) = after.strip_prefix('\'') {
            quoted.find('\'').map_or(after.len(), |close| close + 2)
        } else {
            after
                .find(|c: char| c == '&' || c.is_whitespace())
                .unwrap_or(after.len())
        };
        masked.push_str(MASK);
        rest = &after[end..];
    }
    masked.push_str(rest);
    masked
}

/// The one line for a setting whose value is wrong: `NAME (--flag) 'value': problem`.
pub fn bad_setting(key: &str, value: &str, problem: impl Display) -> String {
    format!("{} '{}': {problem}", setting_name(key), shown_value(value))
}

/// The one line for a clap error about a value (unparsable, out of range, not one of the
/// choices); `None` for the others (`--help`, `--version`, unknown flags), which clap prints.
pub fn describe_cli_error(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let text = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    // "--auth <AUTH>": the flag is its first word.
    let arg = text(ContextKind::InvalidArg)?;
    let flag = arg.split_whitespace().next()?.to_owned();
    let value = text(ContextKind::InvalidValue).unwrap_or_default();
    let problem = match (e.kind(), e.get(ContextKind::ValidValue)) {
        (ErrorKind::ValueValidation, _) => std::error::Error::source(e)
            .map_or_else(|| "invalid value".to_owned(), |s| s.to_string()),
        (_, Some(ContextValue::Strings(choices))) => {
            format!("expected one of: {}", choices.join(", "))
        }
        _ => "expected a value".to_owned(),
    };
    let name = setting_name(&flag);
    let hidden = {
        use clap::CommandFactory;
        Cli::command().get_arguments().any(|a| {
            a.get_long() == Some(flag.trim_start_matches("--")) && a.is_hide_env_values_set()
        })
    };
    let shown = if hidden && !value.is_empty() {
        "(hidden)".to_owned()
    } else {
        shown_value(&value)
    };
    Some(format!("{name} '{shown}': {problem}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn cors_origins_parse() {
        assert_eq!(CorsOrigins::parse("*"), CorsOrigins::Any);
        assert_eq!(CorsOrigins::parse(""), CorsOrigins::Any);
        assert_eq!(
            CorsOrigins::parse("https://a.example, https://b.example"),
            CorsOrigins::List(vec!["https://a.example".into(), "https://b.example".into()])
        );
    }

    #[test]
    fn flags_become_settings() {
        let cli = Cli::try_parse_from([
            "minichat-server",
            "--bind",
            "0.0.0.0:9000",
            "--auth",
            "off",
            "--max-body-bytes",
            "100",
        ])
        .unwrap();
        let s = cli.options.settings();
        assert_eq!(s.bind.port(), 9000);
        assert_eq!(s.auth, AuthMode::Off);
        assert_eq!(s.limits.max_body_bytes, 100);
        assert!(Cli::try_parse_from(["minichat-server", "--auth", "maybe"]).is_err());
        assert!(Cli::try_parse_from(["minichat-server", "--bind", "nowhere"]).is_err());
    }

    #[test]
    fn defaults_come_from_one_place() {
        let s = Cli::try_parse_from(["minichat-server"])
            .unwrap()
            .options
            .settings();
        let d = Settings::default();
        assert_eq!(s.bind, d.bind);
        assert_eq!(s.cors, d.cors);
        assert_eq!(s.limits.max_body_bytes, Limits::DEFAULT.max_body_bytes);
        assert_eq!(s.limits.max_header_bytes, Limits::DEFAULT.max_header_bytes);
        assert_eq!(
            s.limits.header_read_timeout,
            Limits::DEFAULT.header_read_timeout
        );
        assert_eq!(s.chat.database_pool_size, d.chat.database_pool_size);
        assert_eq!(s.chat.redis_prefix, d.chat.redis_prefix);
        assert_eq!(s.chat.queue_capacity, d.chat.queue_capacity);
        assert_eq!(s.chat.max_group_members, d.chat.max_group_members);
        assert_eq!(s.chat.backend_timeout, d.chat.backend_timeout);
        assert_eq!(
            s.limits.ws_send_buffer_bytes,
            Limits::DEFAULT.ws_send_buffer_bytes
        );
        assert_eq!(s.limits.ws_write_stall, Limits::DEFAULT.ws_write_stall);
        let s = Cli::try_parse_from(["minichat-server", "--backend-timeout-ms", "1500"])
            .unwrap()
            .options
            .settings();
        assert_eq!(s.chat.backend_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn cors_origins_are_checked() {
        assert_eq!(CorsOrigins::from_setting("*"), Ok(CorsOrigins::Any));
        assert!(CorsOrigins::from_setting("https://a.example,http://b.example:8080").is_ok());
        for bad in [
            "",
            "not a url",
            "https://a.example/",
            "ftp://a.example",
            "https://A.example",
        ] {
            assert!(CorsOrigins::from_setting(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bad_value_is_one_line_naming_variable_and_flag() {
        let e = Cli::try_parse_from(["minichat-server", "--auth", "maybe"]).unwrap_err();
        let line = describe_cli_error(&e).unwrap();
        assert_eq!(
            line,
            "MINICHAT_AUTH (--auth) 'maybe': expected one of: token, off"
        );
        let e = Cli::try_parse_from(["minichat-server", "--send-rate", "0"]).unwrap_err();
        let line = describe_cli_error(&e).unwrap();
        assert_eq!(
            line,
            "MINICHAT_SEND_RATE (--send-rate) '0': expected a whole number of at least 1"
        );
        let e = Cli::try_parse_from(["minichat-server", "--backend-timeout-ms", "0"]).unwrap_err();
        assert_eq!(
            describe_cli_error(&e).unwrap(),
            "MINICHAT_BACKEND_TIMEOUT_MS (--backend-timeout-ms) '0': expected a whole number of at least 1"
        );
        assert_eq!(
            shown_value("postgresql://u:pw@h:5432/d"),
            "postgresql://u:***@h:5432/d"
        );
    }

    #[test]
    fn every_password_is_masked() {
        let cases = [
            ("postgresql://u@h:5432/d", "postgresql://u@h:5432/d"),
            (
                "postgresql://u:pw@h1:5432,h2:5432/d?target_session_attrs=read-write",
                "postgresql://u:***@h1:5432,h2:5432/d?target_session_attrs=read-write",
            ),
            (
                "postgresql://u:p%40ss@h1,h2/d",
                "postgresql://u:***@h1,h2/d",
            ),
            (
                "postgresql://h1,h2/d?user=u&password=pw&sslmode=disable",
                "postgresql://h1,h2/d?user=u&password=***&sslmode=disable",
            ),
            (
                "host=a,b user=u password='p w' dbname=d",
                "host=a,b user=u password=*** dbname=d",
            ),
            ("host=a password=pw", "host=a password=***"),
            (
                "redis://:pw@127.0.0.1:7001,redis://u:pw2@127.0.0.1:7002",
                "redis://:***@127.0.0.1:7001,redis://u:***@127.0.0.1:7002",
            ),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("garbage", "garbage"),
        ];
        for (value, shown) in cases {
            assert_eq!(shown_value(value), shown, "{value}");
        }
    }

    #[test]
    fn a_multi_host_database_url_is_accepted() {
        let url = "postgresql://u@127.0.0.1:5432,127.0.0.1:5433/db?target_session_attrs=read-write";
        let cli = Cli::try_parse_from(["minichat-server", "--database-url", url]).unwrap();
        assert_eq!(
            cli.options.settings().chat.database_url.as_deref(),
            Some(url)
        );
        let cli =
            Cli::try_parse_from(["minichat-server", "migrate", "--database-url", url]).unwrap();
        assert!(matches!(cli.command, Some(Command::Migrate { .. })));
    }
}
