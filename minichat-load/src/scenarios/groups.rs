//! `groups`: `--groups` group conversations of `--members` users each (disjoint), every member
//! with one WebSocket, every member sending to its group in turn, so each message is owed to
//! the group's other members: deliveries per second and delivery latency of group fan-out.
//! Sockets replay from `since=0`, so the groups' `created` events count in each user's seqs.

use super::traffic::{self, Dest, Topology};
use crate::args::GroupsArgs;
use crate::error::{LoadError, Result};
use crate::report::Report;
use crate::target::Deployment;
use std::sync::Arc;

pub async fn run(
    deployment: Arc<Deployment>,
    args: &GroupsArgs,
    report: &mut Report,
) -> Result<()> {
    if args.groups == 0 || args.members < 2 {
        return Err(LoadError::Usage(
            "--groups must be at least 1 and --members at least 2".into(),
        ));
    }
    let users = deployment.create_users(args.groups * args.members).await?;
    // Group g is users g * members .. (g + 1) * members.
    let mut senders = Vec::with_capacity(users.len());
    for g in 0..args.groups {
        let members: Vec<usize> = (g * args.members..(g + 1) * args.members).collect();
        let of_group: Vec<_> = members.iter().map(|&m| &users[m]).collect();
        let id = deployment
            .create_group(g, &format!("load{g}"), &of_group)
            .await?;
        for &member in &members {
            let others = members.iter().copied().filter(|&m| m != member).collect();
            senders.push((member, vec![Dest::conversation(id, others)]));
        }
    }
    let topology = Topology {
        socket_users: (0..users.len()).collect(),
        senders,
        replay: true,
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
