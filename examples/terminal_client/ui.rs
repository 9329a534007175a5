//! The terminal side of the client: stdin read on a thread of its own, each line understood as
//! a command or a message, and one line of output per event.

use std::fmt::Display;
use std::io::{BufRead, Write};
use tokio::sync::mpsc;

/// What `/help` prints.
pub const HELP: &str = "* /peer NAME: chat with NAME (username or id) · /group TITLE USER…: make a group and open it · /open NAME: open a group (its title) or a chat (the peer) · /history: last 20 messages · /quit: exit · //text: send /text";

/// Writes one line to stdout and flushes it; a closed stdout ends the program quietly.
pub fn say(line: impl Display) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
        std::process::exit(1);
    }
}

/// Reads stdin on a thread of its own (a blocked read must not hold up the exit).
pub fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(1);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match stdin.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).into_owned();
                    if tx.blocking_send(line).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// One line of stdin, understood.
#[derive(Debug, PartialEq)]
pub enum Command<'a> {
    Quit,
    Help,
    /// `/peer` alone: who the peer is.
    ShowPeer,
    /// `/peer NAME`.
    Peer(&'a str),
    /// `/group TITLE user…` (the title is one word).
    Group(&'a str, Vec<&'a str>),
    /// `/open NAME`: a group's title or a peer's username.
    Open(&'a str),
    /// A command used wrongly: what it takes.
    Usage(&'static str),
    History,
    /// A line to send (`//text` sends `/text`).
    Send(&'a str),
    /// A `/word` that is no command.
    Unknown(&'a str),
    /// A blank line.
    Nothing,
}

impl Command<'_> {
    pub fn parse(line: &str) -> Command<'_> {
        let line = line.trim_end_matches(['\r', '\n']);
        let (command, rest) = match line.split_once(char::is_whitespace) {
            Some((command, rest)) => (command, rest.trim()),
            None => (line, ""),
        };
        match command {
            "/quit" => Command::Quit,
            "/help" => Command::Help,
            "/peer" if rest.is_empty() => Command::ShowPeer,
            "/peer" => Command::Peer(rest),
            "/history" => Command::History,
            "/group" => {
                let mut words = rest.split_whitespace();
                match words.next() {
                    Some(title) => Command::Group(title, words.collect()),
                    None => Command::Usage("/group TITLE USER…"),
                }
            }
            "/open" if rest.is_empty() => Command::Usage("/open NAME"),
            "/open" => Command::Open(rest),
            _ if line.starts_with("//") => Command::Send(&line[1..]),
            _ if line.starts_with('/') => Command::Unknown(command),
            _ if line.trim().is_empty() => Command::Nothing,
            _ => Command::Send(line),
        }
    }
}
