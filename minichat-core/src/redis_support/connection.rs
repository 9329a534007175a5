//! One Redis or a Redis Cluster, behind one connection type.
//!
//! `REDIS_URL` names either one Redis (`redis://host:6379`) or the seed nodes of a Redis
//! Cluster, comma-separated (`redis://h1:7001,redis://h2:7002,...`); a single URL that turns out
//! to be a cluster node is a cluster too. This file is where that difference is decided
//! ([`Target`]) and hidden ([`Connection`]): the cache, the broker and presence issue the same
//! commands either way, and ask `RedisPool::is_cluster` only where a cluster needs them
//! issued differently (one pipeline per user's slot, `SPUBLISH` instead of `PUBLISH`, a `SCAN`
//! per master).
//!
//! On a cluster, redis-rs's [`ClusterConnection`] keeps a multiplexed connection per node,
//! routes each command by its key's slot, follows `MOVED` and `ASK`, and refreshes the slot map
//! when a shard fails over; it is cloned per call like the single-node
//! [`MultiplexedConnection`], so concurrent commands bound for one node share its pipeline.

use super::SETTING;
use crate::error::{Error, Result};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Value};

/// Where `REDIS_URL` says Redis is.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// One Redis server.
    Single(ConnectionInfo),
    /// The seed nodes of a Redis Cluster (any reachable one tells the rest).
    Cluster(Vec<ConnectionInfo>),
}

impl Target {
    /// Parses and checks `REDIS_URL` without connecting: one URL is one Redis (unless start-up
    /// finds it is a cluster node), several comma-separated URLs are a cluster's seeds.
    pub(crate) fn parse(url: &str) -> Result<Target> {
        const EXPECTED: &str = "expected redis://host:port[/db], or several such URLs separated by commas for a Redis Cluster";
        let url = url.trim();
        if url.is_empty() {
            return Err(Error::config(SETTING, format!("is empty; {EXPECTED}")));
        }
        let mut seeds = Vec::new();
        for (i, seed) in url.split(',').map(str::trim).enumerate() {
            if seed.is_empty() {
                return Err(Error::config(
                    SETTING,
                    format!("URL number {} of the list is empty; {EXPECTED}", i + 1),
                ));
            }
            let info = seed.into_connection_info().map_err(|e| {
                Error::config(SETTING, format!("not a valid Redis URL ({e}); {EXPECTED}"))
            })?;
            seeds.push(info);
        }
        Ok(if seeds.len() == 1 {
            Target::Single(seeds.remove(0))
        } else {
            if seeds.iter().any(|s| s.redis_settings().db() != 0) {
                return Err(Error::config(
                    SETTING,
                    "a Redis Cluster has only database 0; drop the /db from its URLs",
                ));
            }
            Target::Cluster(seeds)
        })
    }
}

/// A connection to one Redis or to a Redis Cluster; cloned per call, cheaply.
#[derive(Clone)]
pub(crate) enum Connection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Connection {
    /// The `host:port` of every master serving slots now (a cluster's `CLUSTER NODES`, masters
    /// not flagged as failing); empty on a single Redis.
    pub(crate) async fn masters(&mut self) -> RedisResult<Vec<(String, u16)>> {
        let Connection::Cluster(conn) = self else {
            return Ok(Vec::new());
        };
        let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(conn).await?;
        Ok(parse_masters(&nodes))
    }

    /// PINGs the one Redis; on a cluster, asks whether the cluster is healthy (`CLUSTER
    /// INFO` says `cluster_state:ok`) and PINGs every master serving slots, by address, so a
    /// shard that is down (and not yet failed over) counts as Redis being down.
    pub(crate) async fn ping_every_shard(&mut self) -> RedisResult<()> {
        let Connection::Cluster(conn) = self else {
            return redis::cmd("PING")
                .query_async::<Value>(self)
                .await
                .map(drop);
        };
        let info: String = redis::cmd("CLUSTER").arg("INFO").query_async(conn).await?;
        if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "the Redis Cluster reports cluster_state other than ok",
            )));
        }
        let masters = self.masters().await?;
        let pings = masters.iter().map(|(host, port)| {
            let mut conn = self.clone();
            async move { conn.on_node(redis::cmd("PING"), host, *port).await }
        });
        futures_util::future::try_join_all(pings).await.map(drop)
    }

    /// `command` on the master at `host:port` of a cluster (as [`masters`](Self::masters) named
    /// it), or on the one Redis.
    pub(crate) async fn on_node(
        &mut self,
        command: Cmd,
        host: &str,
        port: u16,
    ) -> RedisResult<Value> {
        match self {
            Connection::Single(conn) => command.query_async(conn).await,
            Connection::Cluster(conn) => {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.to_owned(),
                    port,
                });
                conn.route_command(command, route).await
            }
        }
    }
}

/// The masters with slots in a `CLUSTER NODES` answer: lines of `id ip:port@bus flags master
/// ping pong epoch link slot...`.
fn parse_masters(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            let serving = flags.split(',').any(|f| f == "master")
                && !flags.split(',').any(|f| f == "fail" || f == "fail?")
                && fields.len() > 8;
            if !serving {
                return None;
            }
            let address = fields.get(1)?.split('@').next()?;
            let (host, port) = address.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(conn) => conn.req_packed_command(cmd),
            Connection::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(conn) => conn.get_db(),
            Connection::Cluster(conn) => conn.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_is_one_redis_and_a_list_is_a_cluster() {
        assert!(matches!(
            Target::parse("redis://127.0.0.1:6379/0"),
            Ok(Target::Single(_))
        ));
        match Target::parse(" redis://127.0.0.1:7001 , redis://127.0.0.1:7002,redis://h:7003") {
            Ok(Target::Cluster(seeds)) => assert_eq!(seeds.len(), 3),
            other => panic!("expected a cluster, got {other:?}"),
        }
    }

    #[test]
    fn malformed_urls_are_config_errors_naming_the_setting() {
        for url in [
            "",
            "   ",
            "http://localhost:6379",
            "redis://host:notaport",
            "garbage",
            "redis://127.0.0.1:7001,",
            "redis://127.0.0.1:7001,,redis://127.0.0.1:7002",
            "redis://127.0.0.1:7001,garbage",
            "redis://127.0.0.1:7001/2,redis://127.0.0.1:7002/2",
        ] {
            match Target::parse(url) {
                Err(Error::Config { setting, .. }) => assert_eq!(setting, "REDIS_URL", "{url}"),
                other => panic!("{url:?}: expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn masters_are_the_live_nodes_with_slots() {
        let nodes = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@40003 master - 0 1426238318243 3 connected 10923-16383
6ec2 127.0.0.1:30005@40005 master,fail - 0 1426238316232 5 disconnected
e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
";
        assert_eq!(
            parse_masters(nodes),
            vec![
                ("127.0.0.1".to_owned(), 30002),
                ("127.0.0.1".to_owned(), 30003),
                ("127.0.0.1".to_owned(), 30001),
            ]
        );
    }
}
