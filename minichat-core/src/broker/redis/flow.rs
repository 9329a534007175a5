//! Paces this node's publishing by how far behind its own subscriber connection is.
//!
//! This file exists because the two halves of the broker run at different costs. A `PUBLISH`
//! costs the publishing node a reply; the event it carries comes back as a push on the
//! subscriber connection, which has to be parsed, decoded and handed to the hub. redis-rs reads
//! that connection as fast as the socket delivers and queues its pushes in process, without a
//! bound, for the push handler (`link`). So a node whose clients send flat out can publish
//! faster than it receives, and nothing slows it: the queue grows, deliveries fall seconds
//! behind their acknowledgements, and the streams' windows of acknowledged own sends overflow
//! into gap fills from storage (measured: `BENCHMARKS.md`, stop 23).
//!
//! The bound is enforced here instead. The node keeps at most one probe in flight: a `PUBLISH`
//! of a token on a channel only it subscribes to (`{prefix}probe:{<node>}`), riding in the
//! pipeline of a send (at most every [`PROBE_EVERY`]). Pushes come back in order, so the probe
//! returns once everything published before it has been handed to the hub: its age is the
//! subscriber's backlog. While a probe is older than [`LAG_LIMIT`], every publish of this node
//! waits for it to return ([`Flow::paced`]); the connection whose send waits reads no more frames
//! meanwhile, so the backlog reaches the clients as TCP backpressure instead of as memory.
//! Nothing waits while the subscriber connection is down (sends fall back to local delivery
//! then), nor longer than the backend budget, and a lost connection forgets the probe.
//!
//! Only on a single Redis: on a Redis Cluster each shard's pushes keep their own order, so one
//! probe cannot stand for them all, and the cluster's paths send none (nothing then waits).

use crate::redis_support::Keys;
use crate::telemetry;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The subscriber backlog (the age of the probe in flight) above which this node's publishes
/// wait for it to drain.
pub(super) const LAG_LIMIT: Duration = Duration::from_millis(5);

/// The least time between two probes.
pub(super) const PROBE_EVERY: Duration = Duration::from_millis(5);

/// The probe in flight and when the last one went out (see the module docs).
pub(super) struct Flow {
    channel: String,
    state: Mutex<State>,
    /// Notified when the probe in flight returns or is forgotten.
    returned: Notify,
}

#[derive(Default)]
struct State {
    /// The token and send time of the probe in flight.
    in_flight: Option<(u64, Instant)>,
    last_sent: Option<Instant>,
    next_token: u64,
}

impl Flow {
    /// The flow of a node whose probes go on `keys`' probe channel for a random node id.
    pub(super) fn new(keys: &Keys) -> Flow {
        Flow {
            channel: keys.probe_channel(rand::random()),
            state: Mutex::new(State::default()),
            returned: Notify::new(),
        }
    }

    /// The channel this node's probes travel on (its subscriber subscribes to it).
    pub(super) fn channel(&self) -> &str {
        &self.channel
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a probe's `PUBLISH` (its reply ignored) to `pipe` when one is due: none in
    /// flight, and none sent within [`PROBE_EVERY`].
    pub(super) fn probe(&self, pipe: &mut redis::Pipeline) {
        let now = Instant::now();
        let mut state = self.state();
        let recent = state
            .last_sent
            .is_some_and(|at| now.duration_since(at) < PROBE_EVERY);
        if state.in_flight.is_some() || recent {
            return;
        }
        state.next_token = state.next_token.wrapping_add(1);
        state.in_flight = Some((state.next_token, now));
        state.last_sent = Some(now);
        pipe.cmd("PUBLISH")
            .arg(&self.channel)
            .arg(state.next_token)
            .ignore();
    }

    /// A probe came back with `token`: the backlog published before it has been delivered.
    pub(super) fn returned(&self, token: &[u8]) {
        let token = std::str::from_utf8(token).ok().and_then(|t| t.parse().ok());
        let mut state = self.state();
        match state.in_flight {
            Some((sent, at)) if Some(sent) == token => {
                metrics::histogram!(telemetry::REDIS_SUBSCRIBER_LAG).record(at.elapsed());
                state.in_flight = None;
            }
            // One forgotten before it came back.
            _ => return,
        }
        drop(state);
        self.returned.notify_waiters();
    }

    /// Forgets the probe in flight (its round trip failed, or the subscriber connection was
    /// lost with it), releasing whoever waits for it.
    pub(super) fn forget(&self) {
        self.state().in_flight = None;
        self.returned.notify_waiters();
    }

    /// Returns once the subscriber is within [`LAG_LIMIT`] of this node's publishes: at once
    /// unless a probe has been in flight for longer, else when it returns. Never waits while
    /// `link_up` says the subscriber connection is down, nor past `budget`.
    pub(super) async fn paced(&self, link_up: impl Fn() -> bool, budget: Duration) {
        let deadline = Instant::now() + budget;
        let mut counted = false;
        loop {
            let returned = self.returned.notified();
            tokio::pin!(returned);
            // Registered before the check, so a return in between is not missed.
            returned.as_mut().enable();
            let behind = self
                .state()
                .in_flight
                .is_some_and(|(_, at)| at.elapsed() > LAG_LIMIT);
            if !behind || !link_up() {
                return;
            }
            if !counted {
                metrics::counter!(telemetry::REDIS_FANOUT_PAUSES).increment(1);
                counted = true;
            }
            if tokio::time::timeout_at(deadline, returned).await.is_err() {
                // Nothing came back within the budget: the probe is taken for lost.
                self.forget();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn flow() -> Flow {
        Flow::new(&Keys::new("test:"))
    }

    /// The token of the probe a send's pipeline would carry now, if one is due.
    fn probed(flow: &Flow) -> Option<u64> {
        let before = flow.state().next_token;
        let mut pipe = redis::pipe();
        flow.probe(&mut pipe);
        let after = flow.state().next_token;
        let packed = pipe.get_packed_pipeline();
        let carries = String::from_utf8_lossy(&packed).contains(flow.channel());
        assert_eq!(
            carries,
            after != before,
            "a probe is in the pipeline iff one is sent"
        );
        carries.then_some(after)
    }

    #[tokio::test(start_paused = true)]
    async fn one_probe_in_flight_and_none_sooner_than_probe_every() {
        let flow = flow();
        let first = probed(&flow).expect("the first send probes");
        assert_eq!(probed(&flow), None, "one probe in flight at a time");
        flow.returned(first.to_string().as_bytes());
        assert_eq!(probed(&flow), None, "not again within PROBE_EVERY");
        tokio::time::advance(PROBE_EVERY).await;
        assert!(probed(&flow).is_some(), "due again after PROBE_EVERY");
    }

    #[tokio::test(start_paused = true)]
    async fn publishes_wait_only_while_the_probe_is_older_than_the_limit() {
        let flow = flow();
        let up = || true;
        let budget = Duration::from_secs(5);
        // Nothing in flight, or a young probe: no wait.
        assert!(flow.paced(up, budget).now_or_never().is_some());
        let token = probed(&flow).expect("a probe");
        assert!(flow.paced(up, budget).now_or_never().is_some());
        // Older than the limit: publishes wait, a stale token does not release them, and the
        // probe's return does.
        tokio::time::advance(LAG_LIMIT + Duration::from_millis(1)).await;
        let waiting = flow.paced(up, budget);
        tokio::pin!(waiting);
        assert!(waiting.as_mut().now_or_never().is_none(), "it waits");
        flow.returned((token + 1).to_string().as_bytes());
        assert!(waiting.as_mut().now_or_never().is_none(), "a stale token");
        flow.returned(token.to_string().as_bytes());
        assert!(waiting.now_or_never().is_some(), "released by the return");
        // With the subscriber connection down, nothing waits.
        tokio::time::advance(PROBE_EVERY).await;
        probed(&flow).expect("a probe");
        tokio::time::advance(LAG_LIMIT * 2).await;
        assert!(flow.paced(|| false, budget).now_or_never().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_probe_holds_publishes_no_longer_than_the_budget() {
        let flow = flow();
        probed(&flow).expect("a probe");
        tokio::time::advance(LAG_LIMIT * 2).await;
        let started = Instant::now();
        let budget = Duration::from_millis(300);
        flow.paced(|| true, budget).await;
        assert_eq!(started.elapsed(), budget, "waited exactly the budget");
        // Forgotten: the next publish does not wait, and the next send probes again.
        assert!(flow.paced(|| true, budget).now_or_never().is_some());
        assert!(probed(&flow).is_some());
        // A forgotten probe's late return changes nothing.
        flow.forget();
        flow.returned(b"1");
    }
}
