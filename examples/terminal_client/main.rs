//! A line-oriented terminal client for a Minichat server: plain stdin in, plain stdout out, so a
//! person can chat with it in a terminal and a program can drive it through pipes.
//!
//! Start a server (in-memory storage, auth `token`) and two clients, each in its own terminal:
//!
//! ```sh
//! cargo run --release -p minichat-server
//! cargo run --example terminal_client -- --signup alice
//! cargo run --example terminal_client -- --signup bob --peer alice
//! ```
//!
//! `--signup NAME` registers a new user (`POST /users/`) and prints its id and token; run again
//! later as that user with `--user-id ID --token TOKEN` (the token can also come from
//! `MINICHAT_TOKEN`; against a server with auth `off` it may be left out). `--server URL` picks
//! the server (default `http://127.0.0.1:8000`; plain HTTP only) and `--peer USERNAME_OR_ID` the
//! user to chat with.
//!
//! Every line typed is sent to the peer over the WebSocket (`ws://…/ws/<id>?token=…`). Commands:
//!
//! | line            | effect                                                                 |
//! |-----------------|------------------------------------------------------------------------|
//! | `/peer NAME`    | chat with NAME (a username, or an id), and watch its presence          |
//! | `/group T U…`   | make the group T (one word) with users U…, and send to it from now on  |
//! | `/open NAME`    | send to the group titled NAME, or to the peer NAME, of your inbox      |
//! | `/history`      | the last 20 messages with the peer (or of the group), oldest first     |
//! | `/help`         | this list                                                              |
//! | `/quit`         | close the connection and exit (status 0)                               |
//! | `//text`        | send `/text` as a message                                              |
//!
//! What it prints, one event a line:
//!
//! ```text
//! * connected as bob
//! [10:15:30] alice: hello bob              a message (the time is the server's, in UTC)
//! [10:15:31] #team carol: hi all           a message in the group "team"
//! * alice made the group team (#7) with alice, bob, carol
//!                                          a membership event (also renamed, added, removed)
//! > hi alice (sent #42)                    a line of yours, stored by the server as message 42
//! * alice is typing…
//! * alice read up to #42
//! * alice is online
//! ! Message content cannot be empty        an error (from the server or the client)
//! * reconnecting…                          the connection dropped; retrying (0.2 s, doubling to 5 s)
//! * reconnected
//! ```
//!
//! Nothing is lost across a drop: the client keeps the highest update sequence number (`seq`)
//! it has seen without a gap and reconnects with `?since=<seq>`, so the server replays what was
//! missed; message ids already printed are skipped. Lines typed while disconnected are queued (up
//! to 100) and sent after the reconnect; a line sent but not yet acknowledged when the
//! connection dropped is sent again with the same `client_id`, which the server stores once.
//!
//! After printing a message from the peer it sends a read receipt, and after choosing a peer a
//! presence `watch`. It sends no typing notices (it only sees whole lines). A server that does
//! not know a frame answers with an error frame: the client prints it and carries on.
//!
//! At the end of stdin it waits (up to 10 s) until every line it read has been acknowledged,
//! then exits with status 0 (1 if some could not be delivered).

//!
//! The modules: `api` (REST), `stream` (the socket and resume bookkeeping), `client` (the
//! session's state machine; `client/groups.rs` its groups), `target` (where lines go: a peer or
//! a group), `ui` (stdin commands, printing). This file reads the arguments,
//! signs up or in, and starts the session.

mod api;
mod client;
mod stream;
mod target;
mod ui;

use api::Api;
use clap::{ArgGroup, Parser};
use client::Client;
use std::process::ExitCode;
use ui::say;

#[derive(Parser, Debug)]
#[command(
    about = "Line-oriented terminal client for a Minichat server",
    group(ArgGroup::new("identity").required(true).args(["signup", "user_id"]))
)]
struct Args {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    server: String,
    /// Register a new user with this username and chat as it (the token is printed).
    #[arg(long, value_name = "USERNAME", conflicts_with = "user_id")]
    signup: Option<String>,
    /// Chat as this existing user (with --token when the server's auth is on).
    #[arg(long, value_name = "ID")]
    user_id: Option<i64>,
    /// Bearer token of --user-id (with --signup: a token allowed to sign users up, if required).
    #[arg(long, env = "MINICHAT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The user to chat with (username or id); or choose later with `/peer NAME`.
    #[arg(long, value_name = "USERNAME_OR_ID")]
    peer: Option<String>,
}

async fn run(args: Args) -> Result<u8, String> {
    let base = args.server.trim_end_matches('/').to_owned();
    let ws_base = match base.split_once("://") {
        Some(("http", rest)) => format!("ws://{rest}"),
        Some(("https", _)) => {
            return Err("this client speaks plain HTTP only (no TLS): use an http:// URL".into())
        }
        _ => return Err(format!("--server must be an http:// URL, not {base:?}")),
    };
    let mut api = Api::new(base, args.token)?;

    let (me, my_name) = match (args.signup, args.user_id) {
        (Some(username), _) => {
            let (id, name, token) = api
                .signup(&username)
                .await
                .map_err(|e| format!("signup failed: {e}"))?;
            match &token {
                Some(token) => say(format!(
                    "* signed up as {name} (id {id}); token: {token}\n* later: --user-id {id} --token {token}"
                )),
                None => say(format!(
                    "* signed up as {name} (id {id}); the server's auth is off: later, --user-id {id}"
                )),
            }
            api.token = token;
            (id, name)
        }
        (None, Some(id)) => {
            let name = api
                .username(id)
                .await
                .map_err(|e| format!("cannot act as user {id}: {e}"))?;
            (id, name)
        }
        (None, None) => return Err("give --signup USERNAME or --user-id ID --token TOKEN".into()),
    };

    let peer = match args.peer {
        Some(wanted) => {
            let (id, name) = api
                .find_user(&wanted)
                .await
                .map_err(|e| format!("--peer: {e}"))?;
            if id == me {
                return Err("--peer: that is you; choose someone else".into());
            }
            Some((id, name))
        }
        None => None,
    };
    let mut client = Client::new(api, ws_base, me, my_name, args.user_id.is_none());
    if let Some((id, name)) = peer {
        say(format!("* chatting with {name} (#{id})"));
        client.set_peer(id, name);
    }
    Ok(client.run(ui::stdin_lines()).await)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            say(format!("! {e}"));
            ExitCode::FAILURE
        }
    }
}
