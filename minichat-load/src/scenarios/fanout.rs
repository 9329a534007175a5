//! `fanout`: one sender to many receivers in turn (`out`), or many senders to one receiver
//! (`in`); a receiving user may hold several sockets, each owed every message to that user.

use super::traffic::{self, Dest, Topology};
use crate::args::{Direction, FanoutArgs};
use crate::error::{LoadError, Result};
use crate::report::Report;
use crate::target::Deployment;
use std::sync::Arc;

pub async fn run(
    deployment: Arc<Deployment>,
    args: &FanoutArgs,
    report: &mut Report,
) -> Result<()> {
    if args.peers == 0 || args.sockets_per_receiver == 0 {
        return Err(LoadError::Usage(
            "--peers and --sockets-per-receiver must be at least 1".into(),
        ));
    }
    // User 0 is the one side, users 1..=peers the many side.
    let users = deployment.create_users(args.peers + 1).await?;
    let peers: Vec<usize> = (1..=args.peers).collect();
    let topology = match args.direction {
        Direction::Out => {
            let mut socket_users = vec![0];
            for &peer in &peers {
                socket_users.extend(std::iter::repeat_n(peer, args.sockets_per_receiver));
            }
            Topology {
                socket_users,
                senders: vec![(0, peers.iter().map(|&p| Dest::user(&users, p)).collect())],
                replay: false,
            }
        }
        Direction::In => {
            let mut socket_users = peers.clone();
            socket_users.extend(std::iter::repeat_n(0, args.sockets_per_receiver));
            Topology {
                socket_users,
                senders: (0..peers.len())
                    .map(|socket| (socket, vec![Dest::user(&users, 0)]))
                    .collect(),
                replay: false,
            }
        }
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
