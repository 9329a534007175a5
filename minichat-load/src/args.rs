//! The command line: which scenario to run against which deployment, and its parameters.
//! Every default is written here once; the scenarios read the parsed values only.

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use std::net::IpAddr;
use std::time::Duration;

/// Load generator for any Minichat deployment. Prints one JSON line of results on stdout and a
/// readable summary on stderr; exits 1 when a check failed (lost, duplicate or out-of-order
/// messages, error answers), 2 when the run could not be carried out.
#[derive(Debug, Parser)]
#[command(name = "minichat-load", version)]
pub struct Cli {
    #[command(flatten)]
    pub target: Target,
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// Where the deployment is and how to sign users up.
#[derive(Debug, Args, Serialize)]
pub struct Target {
    /// Base URL of a node; repeat (or separate with commas) for several nodes: users are spread
    /// over them round-robin, so deliveries cross nodes.
    #[arg(
        long = "url",
        global = true,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8000"
    )]
    pub urls: Vec<String>,
    /// Admin token for `POST /users/` when the server runs with `MINICHAT_SIGNUP=admin`.
    #[arg(long, global = true, env = "MINICHAT_LOAD_ADMIN_TOKEN")]
    #[serde(skip)]
    pub admin_token: Option<String>,
    /// Connections used at once while setting up (creating users, opening sockets).
    #[arg(long, global = true, default_value_t = 64)]
    pub setup_concurrency: usize,
}

#[derive(Debug, Subcommand, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// REST sends (`POST /messages/`) over keep-alive connections: throughput and latency.
    Rest(RestArgs),
    /// WebSocket chat with acks in a ring (user i sends to user i+1): open-loop at `--rate`, or
    /// closed-loop with `--max`; checks loss, duplicates and per-user seqs.
    Chat(ChatArgs),
    /// One sender to many receivers (`--direction out`) or many senders to one (`in`).
    Fanout(FanoutArgs),
    /// Group conversations: `--groups` groups of `--members` users, every member with one
    /// WebSocket and sending to its group; each message is owed to every other member.
    Groups(GroupsArgs),
    /// Opens idle WebSockets and reports the server's memory per socket.
    Idle(IdleArgs),
}

/// How long and how fast senders send.
#[derive(Debug, Args, Serialize, Clone)]
pub struct Pace {
    /// Messages per second in all, sent on a fixed timetable (open loop): latency is measured
    /// from each message's scheduled time, so a stall shows as latency instead of fewer sends.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Closed loop instead: each sender keeps `--window` messages in flight and sends the next
    /// one when an answer comes back, to find the top throughput (`--rate` is ignored).
    #[arg(long)]
    pub max: bool,
    /// Messages in flight per sender with `--max`.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Seconds of sending.
    #[arg(long, default_value = "10", value_parser = seconds)]
    #[serde(serialize_with = "as_secs")]
    pub duration: Duration,
}

impl Pace {
    /// A rate above 0 unless `--max`, and a window of at least 1 with it.
    pub fn check(&self) -> Result<(), String> {
        if self.max && self.window == 0 {
            return Err("--window must be at least 1".into());
        }
        if !(self.max || self.rate.is_finite() && self.rate > 0.0) {
            return Err("--rate must be above 0 (or use --max)".into());
        }
        Ok(())
    }
}

#[derive(Debug, Args, Serialize)]
pub struct RestArgs {
    /// Users created for the run; sender and receiver are drawn from them in turn.
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// Keep-alive connections sending at once.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Stop after this many messages in all (otherwise at the end of `--duration`).
    #[arg(long)]
    pub messages: Option<u64>,
    #[command(flatten)]
    #[serde(flatten)]
    pub pace: Pace,
}

/// After the senders stop, how long to wait for the last acks and deliveries.
#[derive(Debug, Args, Serialize, Clone)]
pub struct Grace {
    /// Seconds to wait after the last send for every ack and delivery before counting the
    /// missing ones as lost.
    #[arg(long = "grace", default_value = "5", value_parser = seconds)]
    #[serde(serialize_with = "as_secs", rename = "grace")]
    pub period: Duration,
}

#[derive(Debug, Args, Serialize)]
pub struct ChatArgs {
    /// Users, each with one WebSocket, each sending to the next.
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    #[command(flatten)]
    #[serde(flatten)]
    pub pace: Pace,
    #[command(flatten)]
    #[serde(flatten)]
    pub grace: Grace,
}

#[derive(Debug, Clone, Copy, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// One sender sends to every receiver in turn.
    Out,
    /// Every sender sends to one receiver.
    In,
}

#[derive(Debug, Args, Serialize)]
pub struct FanoutArgs {
    #[arg(long, value_enum, default_value_t = Direction::Out)]
    pub direction: Direction,
    /// The users on the many side (receivers with `out`, senders with `in`).
    #[arg(long, default_value_t = 100)]
    pub peers: usize,
    /// WebSockets per receiving user: each gets every message to that user (at most the
    /// server's `MINICHAT_MAX_SOCKETS_PER_USER` per node).
    #[arg(long, default_value_t = 1)]
    pub sockets_per_receiver: usize,
    #[command(flatten)]
    #[serde(flatten)]
    pub pace: Pace,
    #[command(flatten)]
    #[serde(flatten)]
    pub grace: Grace,
}

#[derive(Debug, Args, Serialize)]
pub struct GroupsArgs {
    /// Groups, each of its own `--members` users.
    #[arg(long, default_value_t = 10)]
    pub groups: usize,
    /// Members per group (the server's `MINICHAT_MAX_GROUP_MEMBERS` at most).
    #[arg(long, default_value_t = 10)]
    pub members: usize,
    #[command(flatten)]
    #[serde(flatten)]
    pub pace: Pace,
    #[command(flatten)]
    #[serde(flatten)]
    pub grace: Grace,
}

#[derive(Debug, Args, Serialize)]
pub struct IdleArgs {
    /// Idle WebSockets to open and hold (each costs this process one file descriptor).
    #[arg(long, default_value_t = 1000)]
    pub sockets: usize,
    /// Sockets per user (at most the server's `MINICHAT_MAX_SOCKETS_PER_USER` per node).
    #[arg(long, default_value_t = 16)]
    pub sockets_per_user: usize,
    /// The server's process id, to read its resident memory (/proc/PID/status VmRSS) before
    /// and after; several (comma separated) for several local nodes, summed.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Seconds to hold the sockets open once all are connected, before the second reading.
    #[arg(long, default_value = "3", value_parser = seconds)]
    #[serde(serialize_with = "as_secs")]
    pub hold: Duration,
    /// Local addresses to connect from, in turn (e.g. 127.0.0.1,127.0.0.2), when one address
    /// pair's port range is not enough.
    #[arg(long, value_delimiter = ',')]
    pub source_ips: Vec<IpAddr>,
}

fn seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("'{text}': expected a number of seconds"))?;
    if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
        return Err(format!(
            "'{text}': expected seconds above 0 and at most 86400"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn as_secs<S: serde::Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(value.as_secs_f64())
}
