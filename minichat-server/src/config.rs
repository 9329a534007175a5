//! Configuration: command-line flags, each with its environment variable.
//!
//! `minichat-server --help` lists them all. Parsing turns them into [`Settings`], the plain
//! struct the server runs on; an embedding application builds `Settings` directly. A bad value
//! stops the binary with one line naming the setting (clap's own error for unparsable values).

use crate::auth::AuthMode;
use clap::{Parser, Subcommand, ValueEnum};
use minichat_core::ChatConfig;
use std::net::SocketAddr;
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
    Migrate,
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
    #[arg(
        long,
        env = "MINICHAT_BIND",
        default_value = "127.0.0.1:8000",
        global = true
    )]
    pub bind: SocketAddr,

    /// PostgreSQL URL (postgresql://user:pass@host:5432/db); unset keeps data in memory.
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database_url: Option<String>,

    /// Maximum PostgreSQL connections of this node.
    #[arg(long, env = "MINICHAT_DATABASE_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..), global = true)]
    pub database_pool_size: u16,

    /// Redis URL (redis://host:6379); unset keeps fan-out and the cache in this process.
    #[arg(long, env = "REDIS_URL", global = true)]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key and channel.
    #[arg(
        long,
        env = "MINICHAT_REDIS_PREFIX",
        default_value = "minichat:",
        global = true
    )]
    pub redis_prefix: String,

    /// Access control: `token` (JWT bearer tokens) or `off` (the original's open behaviour).
    #[arg(long, env = "MINICHAT_AUTH", value_enum, default_value_t = AuthMode::Token, global = true)]
    pub auth: AuthMode,

    /// HS256 secret shared by all nodes; unset makes a random one per process.
    #[arg(
        long,
        env = "MINICHAT_JWT_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub jwt_secret: Option<String>,

    /// Allowed CORS origins, comma separated, or `*` for any.
    #[arg(
        long,
        env = "MINICHAT_CORS_ORIGINS",
        default_value = "*",
        global = true
    )]
    pub cors_origins: String,

    /// Largest request body accepted, in bytes (larger: 413).
    #[arg(long, env = "MINICHAT_MAX_BODY_BYTES", default_value_t = 64 * 1024, global = true)]
    pub max_body_bytes: usize,

    /// Largest WebSocket message accepted, in bytes (larger: close 1009).
    #[arg(long, env = "MINICHAT_MAX_WS_MESSAGE_BYTES", default_value_t = 64 * 1024, global = true)]
    pub max_ws_message_bytes: usize,

    /// Seconds a client has to send a request's headers; also how long an idle keep-alive
    /// connection is kept waiting for its next request.
    #[arg(long, env = "MINICHAT_HEADER_READ_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub header_read_timeout_secs: u64,

    /// Messages a user may send per second, on average (REST and socket together).
    #[arg(long, env = "MINICHAT_SEND_RATE", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub send_rate: u32,

    /// Messages a user may send in a burst above the rate.
    #[arg(long, env = "MINICHAT_SEND_BURST", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub send_burst: u32,

    /// Typing, read and watch frames a user may send per second, on average.
    #[arg(long, env = "MINICHAT_SIGNAL_RATE", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub signal_rate: u32,

    /// Typing, read and watch frames a user may send in a burst above the rate.
    #[arg(long, env = "MINICHAT_SIGNAL_BURST", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub signal_burst: u32,

    /// Open WebSockets allowed per user on one node.
    #[arg(
        long,
        env = "MINICHAT_MAX_SOCKETS_PER_USER",
        default_value_t = 16,
        global = true
    )]
    pub max_sockets_per_user: usize,

    /// Open WebSockets allowed on one node.
    #[arg(
        long,
        env = "MINICHAT_MAX_SOCKETS",
        default_value_t = 10_000,
        global = true
    )]
    pub max_sockets: usize,

    /// Who may create users: `open` (anyone) or `admin` (an admin token is needed).
    #[arg(long, env = "MINICHAT_SIGNUP", value_enum, default_value_t = Signup::Open, global = true)]
    pub signup: Signup,

    /// Seconds a WebSocket may stay silent before the server pings it; three times that with no
    /// frame at all and it is closed as dead.
    #[arg(long, env = "MINICHAT_WS_PING_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub ws_ping_secs: u64,

    /// Events queued per WebSocket connection before it is closed as a slow consumer.
    #[arg(long, env = "MINICHAT_WS_QUEUE", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub ws_queue: u32,

    /// Log format: human-readable `text`, or `json`.
    #[arg(long, env = "MINICHAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// Limits that keep one client from hurting the rest.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
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
    /// Open WebSockets per user on one node, and in all on one node.
    pub max_sockets_per_user: usize,
    pub max_sockets: usize,
    /// How long in-flight requests get to finish at shutdown.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 64 * 1024,
            max_ws_message_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            ws_ping_interval: Duration::from_secs(30),
            send_rate_per_sec: 30,
            send_burst: 100,
            signal_rate_per_sec: 10,
            signal_burst: 30,
            max_sockets_per_user: 16,
            max_sockets: 10_000,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Which origins may call the API from a browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    Any,
    List(Vec<String>),
}

impl CorsOrigins {
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

/// Everything the server runs on.
#[derive(Debug, Clone)]
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
            cors: CorsOrigins::parse(&self.cors_origins),
            limits: Limits {
                max_body_bytes: self.max_body_bytes,
                max_ws_message_bytes: self.max_ws_message_bytes,
                header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
                ws_ping_interval: Duration::from_secs(self.ws_ping_secs),
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
                database_pool_size: usize::from(self.database_pool_size),
                redis_url: self.redis_url.clone().filter(|s| !s.is_empty()),
                redis_prefix: self.redis_prefix.clone(),
                queue_capacity: self.ws_queue as usize,
                ..ChatConfig::default()
            },
        }
    }
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
}
