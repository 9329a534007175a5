//! The `minichat-server` binary: parse flags and environment, set up logging, then serve,
//! migrate, or mint a token. A bad setting ends it with one line that names the setting.

use clap::Parser;
use minichat_core::{Chat, ChatService};
use minichat_server::config::{Command, LogFormat};
use minichat_server::{shutdown_signal, Authenticator, Cli, Server};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        // PostgreSQL notices ("already exists, skipping") are not news at info.
        .unwrap_or_else(|_| EnvFilter::new("info,tokio_postgres=warn"));
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
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("minichat-server: {message}");
    ExitCode::FAILURE
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.options.log_format);
    let settings = cli.options.settings();
    match cli
        .command
        .unwrap_or(minichat_server::config::Command::Serve)
    {
        Command::Serve => match Server::bind(settings).await {
            Ok(server) => {
                server.run_until(shutdown_signal()).await;
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Migrate => {
            let Some(url) = settings.chat.database_url.as_deref() else {
                return fail("DATABASE_URL: required by `migrate`");
            };
            match Chat::migrate(url).await {
                Ok(()) => {
                    println!("migrations applied");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Token {
            user_id,
            admin,
            ttl_secs,
        } => {
            if settings.jwt_secret.is_none() {
                return fail("MINICHAT_JWT_SECRET: required by `token` (a random secret would make a token no server accepts)");
            }
            let auth = Authenticator::new(settings.auth, settings.jwt_secret.as_deref());
            let ttl = Duration::from_secs(ttl_secs);
            let token = match user_id {
                Some(user_id) if !admin => {
                    // The user must exist, or the token would act as no one.
                    let chat = match Chat::connect(&settings.chat).await {
                        Ok(chat) => chat,
                        Err(e) => return fail(e),
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
