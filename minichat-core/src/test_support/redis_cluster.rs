//! A throw-away Redis Cluster of a test's own: real `redis-server` processes on free loopback
//! ports, joined with `redis-cli --cluster create`, that a test can crash node by node
//! ([`kill`](ThrowawayRedisCluster::kill)), watch fail over to a replica
//! ([`wait_until_ok`](ThrowawayRedisCluster::wait_until_ok)) and bring back on the same port
//! and directory ([`restart`](ThrowawayRedisCluster::restart)), so that the node rejoins from
//! its `nodes.conf`, as a replica of the master that replaced it.
//!
//! ```no_run
//! # async fn demo() {
//! use minichat_core::test_support::{key_slot, ThrowawayRedisCluster};
//! let mut cluster = ThrowawayRedisCluster::start(3, 1).await; // 3 masters, 1 replica each
//! let seeds = cluster.url(); // "redis://127.0.0.1:p1,redis://127.0.0.1:p2,redis://127.0.0.1:p3"
//! let master = cluster.master_of_slot(key_slot(b"user:{42}")).await;
//! cluster.kill(master);
//! cluster.wait_until_ok().await; // its replica was promoted
//! cluster.restart(master).await; // back, as a replica
//! # let _ = seeds;
//! # }
//! ```
//!
//! Every wait polls the nodes until what it waits for holds (or a generous deadline passes, and
//! it panics saying what did not hold): no fixed sleeps.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

pub use super::cluster_view::{key_slot, parse_cluster_nodes, ClusterNodeView, CLUSTER_SLOTS};

/// How long the cluster may take to form, to fail over, or to take a node back.
const SETTLE_DEADLINE: Duration = Duration::from_secs(60);
/// How long one node may take to answer `PING` after it was started.
const START_DEADLINE: Duration = Duration::from_secs(10);
/// Between two polls.
const POLL: Duration = Duration::from_millis(50);

/// The cluster as one node sees it: for each running node, by port, whether it is a master,
/// the port of its master (a replica) and its slot ranges (a master).
type Layout = BTreeMap<u16, (bool, Option<u16>, Vec<(u16, u16)>)>;

/// One `redis-server` of the cluster.
struct Node {
    port: u16,
    /// The cluster bus port (`--cluster-port`), chosen free too rather than `port + 10000`.
    bus_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// A Redis Cluster of `masters * (1 + replicas_per_master)` throw-away `redis-server`s: every
/// process killed, and every directory removed, when dropped, also when the test panics.
pub struct ThrowawayRedisCluster {
    nodes: Vec<Node>,
    /// The masters when the cluster was created, by their first slot.
    seeds: Vec<u16>,
    base: PathBuf,
}

/// `count` distinct loopback ports that were free a moment ago (all bound at once, so none is
/// handed out twice, then released).
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..count)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap_or_else(|e| panic!("cannot bind a local port: {e}"))
        })
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("a bound address").port())
        .collect()
}

/// A connection to the node on `port`, with timeouts that let a slow answer (a `WAIT`) finish
/// but do not hang on a dead node.
pub async fn node_connection(port: u16) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Sends one command (`args`, the first the command's name) to the node on `port`; the reply
/// as text (bulk, status and integer replies), or why it failed.
async fn ask(port: u16, args: &[&str]) -> Result<String, String> {
    let mut conn = node_connection(port)
        .await
        .map_err(|e| format!("connect to {port}: {e}"))?;
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    let value: redis::Value = command
        .query_async(&mut conn)
        .await
        .map_err(|e| format!("{} on {port}: {e}", args.join(" ")))?;
    match value {
        redis::Value::BulkString(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        redis::Value::SimpleString(text) => Ok(text),
        redis::Value::VerbatimString { text, .. } => Ok(text),
        redis::Value::Int(n) => Ok(n.to_string()),
        redis::Value::Okay => Ok("OK".into()),
        other => Err(format!(
            "{} on {port}: unexpected {other:?}",
            args.join(" ")
        )),
    }
}

/// The `field:value` of an `INFO`/`CLUSTER INFO` answer.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.trim_end()
            .strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
    })
}

fn redis_server_missing(e: std::io::Error) -> ! {
    panic!(
        "tests need redis-server on PATH for a throw-away Redis Cluster (Debian: apt-get install \
         redis-server; scripts/test installs it): {e}"
    )
}

impl ThrowawayRedisCluster {
    /// Starts `masters * (1 + replicas_per_master)` nodes, creates the cluster with
    /// `redis-cli --cluster create`, and waits until it is settled (see
    /// [`wait_until_ok`](Self::wait_until_ok)).
    ///
    /// # Panics
    /// With fewer than 3 masters (Redis Cluster needs 3); when `redis-server` or `redis-cli`
    /// is not on `PATH`; when the cluster does not form within 60 s.
    pub async fn start(masters: usize, replicas_per_master: usize) -> ThrowawayRedisCluster {
        assert!(masters >= 3, "a Redis Cluster needs at least 3 masters");
        match Command::new("redis-cli")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(_) => {}
            Err(e) => panic!(
                "tests need redis-cli on PATH to create a Redis Cluster (Debian: apt-get install \
                 redis-tools, which redis-server depends on): {e}"
            ),
        }
        let count = masters * (1 + replicas_per_master);
        let base = std::env::temp_dir().join(format!(
            "minichat-redis-cluster-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let ports = free_ports(2 * count);
        let nodes = (0..count)
            .map(|i| {
                let port = ports[2 * i];
                let dir = base.join(port.to_string());
                std::fs::create_dir_all(&dir).expect("create a node's directory");
                Node {
                    port,
                    bus_port: ports[2 * i + 1],
                    dir,
                    child: None,
                }
            })
            .collect();
        let mut cluster = ThrowawayRedisCluster {
            nodes,
            seeds: Vec::new(),
            base,
        };
        for i in 0..count {
            cluster.spawn(i);
        }
        for node in &cluster.nodes {
            wait_for_ping(node.port).await;
        }

        let mut create = tokio::process::Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create
            .arg("--cluster-replicas")
            .arg(replicas_per_master.to_string())
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(SETTLE_DEADLINE, create.output())
            .await
            .unwrap_or_else(|_| panic!("redis-cli --cluster create took over {SETTLE_DEADLINE:?}"))
            .unwrap_or_else(|e| panic!("run redis-cli --cluster create: {e}"));
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.wait_until_ok().await;
        cluster.seeds = cluster.masters().await;
        assert_eq!(cluster.seeds.len(), masters, "the masters created");
        cluster
    }

    /// Starts node `index`'s `redis-server` (the first time, or again on the same port, bus
    /// port and directory).
    fn spawn(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        assert!(node.child.is_none(), "node {} is running", node.port);
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(node.port.to_string())
            .arg("--cluster-port")
            .arg(node.bus_port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", "1000"])
            .args(["--save", "", "--appendonly", "no"])
            // A replica's full sync starts at once, not after the default 5 s wait for more
            // replicas to share it.
            .args([
                "--repl-diskless-sync",
                "yes",
                "--repl-diskless-sync-delay",
                "0",
            ])
            .arg("--dir")
            .arg(&node.dir)
            .args(["--logfile", "redis.log"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| redis_server_missing(e));
        node.child = Some(child);
    }

    fn index_of(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .unwrap_or_else(|| panic!("port {port} is not a node of this cluster"))
    }

    /// The seed list for `REDIS_URL`: the masters as created, comma-separated
    /// (`redis://127.0.0.1:p1,redis://127.0.0.1:p2,...`).
    pub fn url(&self) -> String {
        self.seeds
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The masters as created (by their first slot): the ports of [`url`](Self::url).
    pub fn seed_ports(&self) -> Vec<u16> {
        self.seeds.clone()
    }

    /// Every node's port, running or not.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Whether the node on `port` is running (not [`kill`](Self::kill)ed).
    pub fn is_running(&self, port: u16) -> bool {
        self.nodes[self.index_of(port)].child.is_some()
    }

    fn running(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
    }

    /// `CLUSTER NODES` as the first running node that answers sees it.
    pub async fn view(&self) -> Vec<ClusterNodeView> {
        let mut errors = Vec::new();
        for port in self.running() {
            match ask(port, &["CLUSTER", "NODES"]).await {
                Ok(text) => return parse_cluster_nodes(&text),
                Err(e) => errors.push(e),
            }
        }
        panic!("no node of the cluster answers CLUSTER NODES: {errors:?}")
    }

    /// The running masters now, by their first slot.
    pub async fn masters(&self) -> Vec<u16> {
        let mut masters: Vec<(u16, u16)> = self
            .view()
            .await
            .iter()
            .filter(|n| n.is_master() && !n.is_failing() && !n.slots.is_empty())
            .map(|n| (n.slots.iter().map(|s| s.0).min().unwrap_or(0), n.port))
            .collect();
        masters.sort_unstable();
        masters.into_iter().map(|(_, port)| port).collect()
    }

    /// The replicas of the master on `master` now.
    pub async fn replicas_of(&self, master: u16) -> Vec<u16> {
        let view = self.view().await;
        let Some(id) = view.iter().find(|n| n.port == master).map(|n| n.id.clone()) else {
            return Vec::new();
        };
        view.iter()
            .filter(|n| n.master_id.as_deref() == Some(id.as_str()))
            .map(|n| n.port)
            .collect()
    }

    /// The port of the master serving `slot` now (not one marked failing).
    ///
    /// # Panics
    /// When no such master is known (the slot's master failed and no replica took over yet).
    pub async fn master_of_slot(&self, slot: u16) -> u16 {
        let view = self.view().await;
        view.iter()
            .find(|n| n.is_master() && !n.is_failing() && n.serves(slot))
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("no master serves slot {slot}: {view:?}"))
    }

    /// The slot of `key`, as the cluster itself computes it (`CLUSTER KEYSLOT`).
    pub async fn slot_of_key(&self, key: &str) -> u16 {
        let mut errors = Vec::new();
        for port in self.running() {
            match ask(port, &["CLUSTER", "KEYSLOT", key]).await {
                Ok(slot) => return slot.parse().expect("CLUSTER KEYSLOT answers a number"),
                Err(e) => errors.push(e),
            }
        }
        panic!("no node answers CLUSTER KEYSLOT: {errors:?}")
    }

    /// The port of the master serving `key` now.
    pub async fn master_of_key(&self, key: &str) -> u16 {
        self.master_of_slot(self.slot_of_key(key).await).await
    }

    /// Kills (SIGKILL: a crash, no goodbye) the node on `port` and waits until it is gone.
    ///
    /// # Panics
    /// When `port` is not a node of this cluster, or not running.
    pub fn kill(&mut self, port: u16) {
        let index = self.index_of(port);
        let mut child = self.nodes[index]
            .child
            .take()
            .unwrap_or_else(|| panic!("node {port} is not running"));
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the killed node on `port` again, on the same port and directory, so its
    /// `nodes.conf` takes it back into the cluster; waits until it answers and the cluster is
    /// settled again with it ([`wait_until_ok`](Self::wait_until_ok)).
    pub async fn restart(&mut self, port: u16) {
        let index = self.index_of(port);
        self.spawn(index);
        wait_for_ping(port).await;
        self.wait_until_ok().await;
    }

    /// Waits until the cluster is settled: every running node says `cluster_state:ok` and,
    /// as every running node sees it, all nodes are known, every running node is connected and
    /// not suspected, the running masters serve all 16384 slots (so a killed master's slots
    /// have gone to a promoted replica) in the same way for every node, and every running
    /// replica replicates from a running master with its link up.
    ///
    /// # Panics
    /// When that does not hold within 60 s, saying what did not.
    pub async fn wait_until_ok(&self) {
        let until = Instant::now() + SETTLE_DEADLINE;
        loop {
            let problem = match self.problem().await {
                None => return,
                Some(problem) => problem,
            };
            assert!(
                Instant::now() < until,
                "the Redis Cluster did not settle within {SETTLE_DEADLINE:?}: {problem}\n{}",
                self.logs_tail()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// What keeps the cluster from being settled now, if anything.
    async fn problem(&self) -> Option<String> {
        let running: Vec<u16> = self.running().collect();
        let mut layouts: Vec<(u16, Layout)> = Vec::new();
        for &port in &running {
            let info = match ask(port, &["CLUSTER", "INFO"]).await {
                Ok(info) => info,
                Err(e) => return Some(e),
            };
            if info_field(&info, "cluster_state") != Some("ok") {
                return Some(format!("node {port}: cluster_state is not ok"));
            }
            let view = match ask(port, &["CLUSTER", "NODES"]).await {
                Ok(text) => parse_cluster_nodes(&text),
                Err(e) => return Some(e),
            };
            if view.len() != self.nodes.len() || view.iter().any(|n| n.has_flag("handshake")) {
                return Some(format!(
                    "node {port} does not know every node yet: {view:?}"
                ));
            }
            let by_id: HashMap<&str, &ClusterNodeView> =
                view.iter().map(|n| (n.id.as_str(), n)).collect();
            let mut layout = BTreeMap::new();
            let mut served = 0;
            for node in &view {
                let alive = running.contains(&node.port);
                if !alive {
                    if !node.slots.is_empty() {
                        return Some(format!(
                            "node {port} still has killed node {} serving slots",
                            node.port
                        ));
                    }
                    continue;
                }
                if node.is_failing() || !node.connected {
                    return Some(format!("node {port} sees {} as {:?}", node.port, node));
                }
                let master = if node.is_master() {
                    served += node.slot_count();
                    None
                } else {
                    let master = node
                        .master_id
                        .as_deref()
                        .and_then(|id| by_id.get(id))
                        .map(|m| m.port);
                    match master {
                        Some(m) if running.contains(&m) => Some(m),
                        _ => {
                            return Some(format!(
                                "node {port} sees replica {} without a running master",
                                node.port
                            ))
                        }
                    }
                };
                layout.insert(node.port, (node.is_master(), master, node.slots.clone()));
            }
            if served != usize::from(CLUSTER_SLOTS) {
                return Some(format!(
                    "node {port} sees running masters serve {served} slots"
                ));
            }
            layouts.push((port, layout));
        }
        if let Some((first_port, first)) = layouts.first() {
            for (port, layout) in &layouts[1..] {
                if layout != first {
                    return Some(format!(
                        "nodes {first_port} and {port} disagree: {first:?} / {layout:?}"
                    ));
                }
            }
            for (replica, (is_master, _, _)) in first {
                if *is_master {
                    continue;
                }
                let info = match ask(*replica, &["INFO", "replication"]).await {
                    Ok(info) => info,
                    Err(e) => return Some(e),
                };
                if info_field(&info, "master_link_status") != Some("up") {
                    return Some(format!("replica {replica}: master link not up"));
                }
            }
        }
        None
    }

    /// The last lines of every node's log, for a failure message.
    fn logs_tail(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let log = std::fs::read_to_string(node.dir.join("redis.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(8)..];
            let state = if node.child.is_some() {
                "running"
            } else {
                "killed"
            };
            out.push_str(&format!(
                "---- node {} ({state}), last lines of its log:\n{}\n",
                node.port,
                tail.join("\n")
            ));
        }
        out
    }
}

/// Waits until the node on `port` answers `PING`.
async fn wait_for_ping(port: u16) {
    let until = Instant::now() + START_DEADLINE;
    loop {
        if ask(port, &["PING"]).await.is_ok() {
            return;
        }
        assert!(
            Instant::now() < until,
            "redis-server did not start on port {port} within {START_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for ThrowawayRedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}
