//! `chat`: every user has one WebSocket and sends to the next user in a ring, so each socket
//! both sends (and reads its acks) and receives one other user's messages.

use super::traffic::{self, Dest, Topology};
use crate::args::ChatArgs;
use crate::error::{LoadError, Result};
use crate::report::Report;
use crate::target::Deployment;
use std::sync::Arc;

pub async fn run(deployment: Arc<Deployment>, args: &ChatArgs, report: &mut Report) -> Result<()> {
    if args.users < 2 {
        return Err(LoadError::Usage(
            "--users must be at least 2 (they send to each other)".into(),
        ));
    }
    let users = deployment.create_users(args.users).await?;
    let topology = Topology {
        socket_users: (0..args.users).collect(),
        senders: (0..args.users)
            .map(|user| (user, vec![Dest::user(&users, (user + 1) % args.users)]))
            .collect(),
        replay: false,
    };
    traffic::run(
        deployment,
        users,
        topology,
        &args.pace,
        args.grace.period,
        report,
    )
    .await
}
