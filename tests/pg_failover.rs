//! PostgreSQL failover with real processes: a primary with a synchronous streaming standby of
//! the test's own, a real `minichat-server` on the multi-host `DATABASE_URL`
//! (`postgresql://…@primary,standby/db?target_session_attrs=read-write`), REST traffic, the
//! primary stopped with `pg_ctl stop -m immediate` mid-traffic and the standby promoted, more
//! traffic; then every acknowledged message is in the new primary exactly once and every user's
//! seqs are gapless. This is the promise README's "several nodes" section makes.
//!
//! Sends carry a `client_id` and are retried on 503 (the answer while no writable PostgreSQL
//! is there, and for a send whose commit was cut off), so the retries are idempotent: a send
//! that failed but did commit (on the standby too) is found by its retry, not stored twice.

mod support;

use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::postgres_pair::{connect, PostgresPair};
use support::server_process::ServerProcess;
use support::{eventually, server_binary, DEADLINE};

const DATABASE: &str = "minichat";
const USERS: usize = 6;
/// Concurrent senders: enough that sends are in flight when the primary dies.
const SENDERS: usize = 8;
/// Acknowledged sends before the primary is stopped, and after the standby is promoted.
const BEFORE: usize = 200;
const AFTER: usize = 200;
/// How long one send may keep being retried on 503 (the failover takes well under a second).
const RETRY_FOR: Duration = Duration::from_secs(30);

/// One acknowledged send: what the server answered, and when.
struct Ack {
    client_id: String,
    sender: i64,
    receiver: i64,
    content: String,
    id: i64,
    at: Instant,
}

/// What the senders share: the next send's number, the acks, the 503s, and when to stop.
#[derive(Default)]
struct Traffic {
    next: AtomicUsize,
    acked: AtomicUsize,
    unavailable: AtomicUsize,
    stop: AtomicBool,
    acks: Mutex<Vec<Ack>>,
}

/// Sends until told to stop: send `k` goes from user `k % USERS` to the next one (so every
/// user sends and receives), with `client_id` `m<k>`, retried on 503 until acknowledged.
async fn sender(http: reqwest::Client, base: String, users: Arc<Vec<i64>>, traffic: Arc<Traffic>) {
    while !traffic.stop.load(Ordering::SeqCst) {
        let k = traffic.next.fetch_add(1, Ordering::SeqCst);
        let (sender, receiver) = (users[k % USERS], users[(k + 1 + k / USERS % 3) % USERS]);
        let client_id = format!("m{k}");
        let content = format!("message {k}");
        let body = json!({"sender_id": sender, "receiver_id": receiver, "content": content,
                          "client_id": client_id});
        let until = Instant::now() + RETRY_FOR;
        loop {
            let answer = http
                .post(format!("{base}/messages/"))
                .json(&body)
                .send()
                .await;
            let (status, reply) = match answer {
                Ok(response) => {
                    let status = response.status().as_u16();
                    (
                        status,
                        response.json::<Value>().await.unwrap_or(Value::Null),
                    )
                }
                Err(e) => panic!("send {client_id}: the server did not answer: {e}"),
            };
            match status {
                200 => {
                    let id = reply["id"].as_i64().expect("the stored message's id");
                    traffic.acks.lock().expect("acks").push(Ack {
                        client_id: client_id.clone(),
                        sender,
                        receiver,
                        content: content.clone(),
                        id,
                        at: Instant::now(),
                    });
                    traffic.acked.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                503 => {
                    traffic.unavailable.fetch_add(1, Ordering::SeqCst);
                    assert!(
                        Instant::now() < until,
                        "send {client_id} still 503 after {RETRY_FOR:?}: {reply}"
                    );
                    // Polling a backend that is coming back, not waiting for time.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => panic!("send {client_id}: {other} {reply}"),
            }
        }
    }
}

/// Waits until at least `count` sends are acknowledged.
async fn acked(traffic: &Traffic, count: usize, what: &str) {
    eventually(Duration::from_secs(60), what, || async {
        (traffic.acked.load(Ordering::SeqCst) >= count).then_some(())
    })
    .await;
}

/// How the primary goes away.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Loss {
    /// `pg_ctl stop -m immediate`: gone at once, every connection cut.
    Crash,
    /// Made read-only but left running: its connections stay open and refuse writes.
    Fence,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_sends_survive_a_crashed_primary_and_a_promoted_synchronous_standby() {
    failover(Loss::Crash).await;
}

/// The pool must leave connections to a server that refuses writes by itself: no restart of
/// the node, no wait for TCP to give up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_leave_a_fenced_primary_that_stays_up_for_the_promoted_standby() {
    failover(Loss::Fence).await;
}

async fn failover(loss: Loss) {
    let started = Instant::now();
    let pair = PostgresPair::start().await;
    let url = pair.url(DATABASE);
    eprintln!("pair ready in {:?}: {url}", started.elapsed());

    // The migrate subcommand takes the multi-host URL too, and creates the database.
    let migrate = Command::new(server_binary())
        .args(["migrate", "--create-database"])
        .env_remove("RUST_LOG")
        .env("DATABASE_URL", &url)
        .output()
        .expect("run minichat-server migrate");
    let printed = String::from_utf8_lossy(&migrate.stdout);
    assert!(
        migrate.status.success() && printed.contains("database created"),
        "migrate: {printed}{}",
        String::from_utf8_lossy(&migrate.stderr)
    );

    let port = minichat_core::test_support::free_port();
    let mut server = ServerProcess::start("pg-failover", port, &[("DATABASE_URL", &url)]);
    let base = server.base();
    let http = reqwest::Client::builder()
        .timeout(DEADLINE)
        .build()
        .expect("client");
    server.wait_healthy(&http).await;

    let mut users = Vec::new();
    for _ in 0..USERS {
        users.push(server.create_user(&http, "fail").await);
    }
    let users = Arc::new(users);

    let traffic = Arc::new(Traffic::default());
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            tokio::spawn(sender(
                http.clone(),
                base.clone(),
                users.clone(),
                traffic.clone(),
            ))
        })
        .collect();

    acked(&traffic, BEFORE, "the sends before the failover").await;
    let killed = Instant::now();
    match loss {
        Loss::Crash => pair.stop_primary_immediately(),
        Loss::Fence => pair.fence_primary().await,
    }
    let acked_at_kill = traffic.acked.load(Ordering::SeqCst);
    let stopped = Instant::now();
    pair.promote_standby();
    let promoted = Instant::now();
    let acked_at_promotion = traffic.acked.load(Ordering::SeqCst);
    acked(
        &traffic,
        acked_at_promotion + AFTER,
        "the sends after the promotion",
    )
    .await;
    traffic.stop.store(true, Ordering::SeqCst);
    for task in senders {
        task.await.expect("a sender panicked");
    }

    let acks = std::mem::take(&mut *traffic.acks.lock().expect("acks"));
    let sent = traffic.next.load(Ordering::SeqCst);
    let unavailable = traffic.unavailable.load(Ordering::SeqCst);
    let first_after = |moment: Instant| {
        acks.iter()
            .filter(|a| a.at > moment)
            .map(|a| a.at - moment)
            .min()
            .expect("a send acknowledged after the promotion")
    };
    eprintln!(
        "{loss:?}: acked {} of {sent} sends ({acked_at_kill} when the primary was lost, \
         {acked_at_promotion} at promotion); {unavailable} answers 503; losing the primary took \
         {:?}, promotion {:?}; first ack {:?} after the loss, {:?} after promotion returned",
        acks.len(),
        stopped - killed,
        promoted - stopped,
        first_after(stopped),
        first_after(promoted),
    );
    // Every send started was carried through to an ack (the senders retry until one).
    assert_eq!(acks.len(), sent, "every send is acknowledged in the end");
    // Sends in flight, or made while no primary was there, were refused, never acked.
    assert!(unavailable > 0, "no send met the failover");

    // The new primary holds every acknowledged message, once, as acknowledged.
    let db = connect(pair.standby_port, DATABASE).await;
    let in_recovery: bool = db
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .expect("ask the new primary")
        .get(0);
    assert!(!in_recovery, "the standby was promoted");
    let rows = db
        .query(
            "SELECT id, sender_id, receiver_id, content, sender_seq, receiver_seq, client_id \
             FROM messages",
            &[],
        )
        .await
        .expect("read the messages");
    assert_eq!(rows.len(), acks.len(), "one row per acknowledged send");
    let mut by_client_id: HashMap<String, (i64, i64, i64, String)> = HashMap::new();
    // user -> every seq of the user's stream (sent and received)
    let mut streams: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for row in &rows {
        let (id, sender, receiver): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        let client_id: Option<String> = row.get(6);
        let client_id = client_id.expect("every send had a client_id");
        let previous = by_client_id.insert(client_id.clone(), (id, sender, receiver, row.get(3)));
        assert!(previous.is_none(), "{client_id} stored twice");
        streams.entry(sender).or_default().push(row.get(4));
        streams.entry(receiver).or_default().push(row.get(5));
    }
    for ack in &acks {
        let stored = by_client_id
            .get(&ack.client_id)
            .unwrap_or_else(|| panic!("acknowledged {} (id {}) was lost", ack.client_id, ack.id));
        assert_eq!(
            stored,
            &(ack.id, ack.sender, ack.receiver, ack.content.clone()),
            "{} is stored as acknowledged",
            ack.client_id
        );
    }
    let last_seqs: HashMap<i64, i64> = db
        .query("SELECT id, last_seq FROM users", &[])
        .await
        .expect("read the users")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    for (user, mut seqs) in streams {
        seqs.sort_unstable();
        let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
        assert_eq!(seqs, expected, "user {user}'s seqs are gapless from 1");
        assert_eq!(
            last_seqs[&user],
            seqs.len() as i64,
            "user {user}'s last_seq"
        );
    }
    eprintln!("{loss:?}: whole test {:?}", started.elapsed());
}
