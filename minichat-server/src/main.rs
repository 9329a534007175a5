//! The `minichat-server` binary: parse flags and environment, set up logging, then serve,
//! migrate, or mint a token. A bad setting ends it with one line that names the setting (its
//! environment variable and flag), the bad value and what is expected.

mod diagnose;
mod fd_limit;

use clap::Parser;
use minichat_core::storage::provision;
use minichat_core::{Chat, ChatService, Error as CoreError};
use minichat_server::config::{bad_setting, describe_cli_error, setting_name, Command, LogFormat};
use minichat_server::{shutdown_signal, Authenticator, Cli, Server, ServerError, Settings};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// The binary's allocator. A server's every message allocates and frees its frames, queue
/// entries and Redis replies on two threads; glibc's malloc spent about 14% of the server's CPU
/// on that under group fan-out (BENCHMARKS.md, "Allocator"). A library embedding minichat-core
/// keeps whatever allocator its application chose.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The filter when `RUST_LOG` is unset or empty. PostgreSQL notices ("already exists,
/// skipping") are not news at info; the redis crate's own warnings repeat many times a second
/// while a Redis Cluster node is down (each reconnection attempt), and the server already says
/// once that Redis is unreachable and once that it is back.
const DEFAULT_LOG_FILTER: &str = "info,tokio_postgres=warn,redis=error";

fn init_logging(format: LogFormat) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(raw) if !raw.trim().is_empty() => EnvFilter::builder().parse(&raw).map_err(|e| {
            format!("RUST_LOG '{raw}': {e}; expected a log filter like `info` or `info,minichat_server=debug`")
        })?,
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err("RUST_LOG: not valid UTF-8; expected a log filter like `info`".into())
        }
        _ => EnvFilter::new(DEFAULT_LOG_FILTER),
    };
    // Logs go to stderr, so that stdout carries only what a subcommand prints (`token`).
    // Colours only for a person at a terminal, not in files or a log collector.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("minichat-server: {message}");
    ExitCode::FAILURE
}

/// The one line for a core error: a configuration error names the setting and its value, and
/// says in plain words what is wrong when the address holds a server of another protocol, or
/// when the database does not exist yet.
async fn explain(settings: &Settings, e: CoreError) -> String {
    let CoreError::Config { setting, reason } = &e else {
        return e.to_string();
    };
    let value = match *setting {
        "DATABASE_URL" => settings.chat.database_url.clone(),
        "REDIS_URL" => settings.chat.redis_url.clone(),
        _ => None,
    };
    let Some(value) = value else {
        return e.to_string();
    };
    let plain = match *setting {
        "DATABASE_URL" => match diagnose::not_postgres(&value).await {
            Some(problem) => Some(problem),
            None => provision::missing_database(&value).await.map(|name| {
                format!(
                    "database \"{name}\" does not exist; create it with `minichat-server migrate --create-database` (same DATABASE_URL), or `createdb {name}`"
                )
            }),
        },
        _ => diagnose::not_redis(&value).await,
    };
    bad_setting(setting, &value, plain.as_deref().unwrap_or(reason))
}

async fn explain_server(settings: &Settings, e: ServerError) -> String {
    match e {
        ServerError::Backend(e) => explain(settings, e).await,
        ServerError::Bind { addr, source } => bad_setting(
            "MINICHAT_BIND",
            &addr.to_string(),
            format!("cannot listen there: {source}; expected a free local address"),
        ),
    }
}

/// The URL a person on this machine opens for `addr` (a wildcard address is reached locally).
fn local_url(addr: SocketAddr, path: &str) -> String {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            [127, 0, 0, 1].into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    format!("http://{addr}{path}")
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => match describe_cli_error(&e) {
            Some(line) => return fail(line),
            None => e.exit(),
        },
    };
    if let Err(line) = init_logging(cli.options.log_format) {
        return fail(line);
    }
    let settings = cli.options.settings();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            if let Some(warning) = fd_limit::ensure_room_for(settings.limits.max_sockets) {
                tracing::warn!("{warning}");
            }
            match Server::bind(settings.clone()).await {
                Ok(server) => {
                    let addr = server.local_addr();
                    tracing::info!(
                        "chat page {}  API docs {}  health check {}",
                        local_url(addr, "/app/"),
                        local_url(addr, "/docs"),
                        local_url(addr, "/health")
                    );
                    server.run_until(shutdown_signal()).await;
                    ExitCode::SUCCESS
                }
                Err(e) => fail(explain_server(&settings, e).await),
            }
        }
        Command::Migrate { create_database } => {
            let Some(url) = settings.chat.database_url.as_deref() else {
                return fail(format!(
                    "{}: required by `migrate`; expected postgresql://user:password@host:5432/dbname",
                    setting_name("DATABASE_URL")
                ));
            };
            if create_database {
                match provision::create_database(url).await {
                    Ok(true) => println!("database created"),
                    Ok(false) => println!("database already exists"),
                    Err(e) => return fail(explain(&settings, e).await),
                }
            }
            match Chat::migrate(url).await {
                Ok(()) => {
                    println!("migrations applied");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(explain(&settings, e).await),
            }
        }
        Command::Token {
            user_id,
            admin,
            ttl_secs,
        } => {
            if settings.jwt_secret.is_none() {
                return fail(format!("{}: required by `token` (a random secret would make a token no server accepts)", setting_name("MINICHAT_JWT_SECRET")));
            }
            let auth = Authenticator::new(settings.auth, settings.jwt_secret.as_deref());
            let ttl = Duration::from_secs(ttl_secs);
            let token = match user_id {
                Some(user_id) if !admin => {
                    // The user must exist, or the token would act as no one.
                    let chat = match Chat::connect(&settings.chat).await {
                        Ok(chat) => chat,
                        Err(e) => return fail(explain(&settings, e).await),
                    };
                    if let Err(e) = chat.get_user(user_id).await {
                        let hint = if settings.chat.database_url.is_none() {
                            " (in-memory storage lives inside the server process: set DATABASE_URL)"
                        } else {
                            ""
                        };
                        return fail(format!("user {user_id}: {e}{hint}"));
                    }
                    auth.issue(user_id, ttl)
                }
                _ => auth.issue_admin(ttl),
            };
            println!("{token}");
            ExitCode::SUCCESS
        }
    }
}
