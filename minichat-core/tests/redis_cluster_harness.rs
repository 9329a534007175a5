//! The throw-away Redis Cluster of `test_support` works: it forms, serves keys on the master
//! of their slot, fails a killed master over to its replica, and takes the killed node back.

use minichat_core::test_support::{key_slot, node_connection, ThrowawayRedisCluster};
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throwaway_cluster_fails_over_a_killed_master_and_takes_it_back() {
    let started = Instant::now();
    let mut cluster = ThrowawayRedisCluster::start(3, 1).await;
    eprintln!("cluster of 6 up in {:?}", started.elapsed());
    let seeds = cluster.seed_ports();
    assert_eq!(seeds.len(), 3);
    assert_eq!(
        cluster.url(),
        seeds
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    for &master in &seeds {
        assert_eq!(cluster.replicas_of(master).await.len(), 1, "{master}");
    }

    // The local slot function agrees with the cluster's, hash tags included.
    let key = "minichat:test:harness:user:{42}";
    let slot = cluster.slot_of_key(key).await;
    assert_eq!(slot, key_slot(key.as_bytes()));
    assert_eq!(slot, key_slot(b"42"));
    let master = cluster.master_of_key(key).await;
    assert_eq!(master, cluster.master_of_slot(slot).await);
    let replica = cluster.replicas_of(master).await[0];

    // Written on its master, and on the replica before the master dies.
    let mut conn = node_connection(master)
        .await
        .expect("connect to the master");
    redis::cmd("SET")
        .arg(key)
        .arg("kept")
        .query_async::<()>(&mut conn)
        .await
        .expect("SET on the slot's master");
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(&mut conn)
        .await
        .expect("WAIT");
    assert_eq!(acked, 1, "the replica has the write");
    drop(conn);

    let killed = Instant::now();
    cluster.kill(master);
    assert!(!cluster.is_running(master));
    cluster.wait_until_ok().await;
    eprintln!("failover of {master} took {:?}", killed.elapsed());
    assert_eq!(
        cluster.master_of_slot(slot).await,
        replica,
        "the replica was promoted"
    );
    let mut conn = node_connection(replica)
        .await
        .expect("connect to the new master");
    let value: Option<String> = redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("GET on the new master");
    assert_eq!(value.as_deref(), Some("kept"));
    drop(conn);

    let restarting = Instant::now();
    cluster.restart(master).await;
    eprintln!("restart of {master} took {:?}", restarting.elapsed());
    assert!(cluster.is_running(master));
    // Back as the replica of the master that replaced it.
    assert_eq!(cluster.replicas_of(replica).await, vec![master]);
    assert_eq!(cluster.master_of_slot(slot).await, replica);
    assert_eq!(cluster.masters().await.len(), 3);
    eprintln!("whole test {:?}", started.elapsed());
}
