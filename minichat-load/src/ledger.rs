//! The delivery checks: what each socket saw (delivery keys and seqs) against what the server
//! acknowledged, giving lost, duplicate and seq-fault counts. Pure bookkeeping, so the checks
//! are unit-tested on made-up records, including the faults they must catch.

/// A message of the run: the sender's index in the run (high half) and its number `k` among
/// that sender's sends (low half).
pub fn key(sender: u32, k: u32) -> u64 {
    (u64::from(sender) << 32) | u64::from(k)
}

/// What one socket recorded.
#[derive(Debug, Default)]
pub struct SocketRecord {
    /// The user (index in the run) the socket belongs to.
    pub user: usize,
    /// Keys of the message events received, in arrival order.
    pub deliveries: Vec<u64>,
    /// Seqs of the events received and of the acks of this socket's own sends.
    pub seqs: Vec<u64>,
    /// Events whose seq was not above the previous event's on this socket.
    pub out_of_order: u64,
    /// The last event seq seen, for `out_of_order`.
    pub last_event_seq: u64,
    /// Sends of this socket that were acked: (receiving user, key).
    pub acked: Vec<(usize, u64)>,
}

impl SocketRecord {
    pub fn new(user: usize) -> SocketRecord {
        SocketRecord {
            user,
            ..SocketRecord::default()
        }
    }

    /// A message event: its key and its seq (the receiving user's).
    pub fn delivered(&mut self, key: u64, seq: u64) {
        if seq <= self.last_event_seq {
            self.out_of_order += 1;
        }
        self.last_event_seq = self.last_event_seq.max(seq);
        self.deliveries.push(key);
        self.seqs.push(seq);
    }

    /// An ack of this socket's send `key` to `receivers` (one user, or a group's other
    /// members), with the sender's seq.
    pub fn acked(&mut self, receivers: &[usize], key: u64, seq: u64) {
        self.acked.extend(receivers.iter().map(|&r| (r, key)));
        self.seqs.push(seq);
    }

    /// An event of the user's stream that is not a message of the run (a membership event):
    /// its seq counts for order and gaps.
    pub fn other_event(&mut self, seq: u64) {
        if seq <= self.last_event_seq {
            self.out_of_order += 1;
        }
        self.last_event_seq = self.last_event_seq.max(seq);
        self.seqs.push(seq);
    }
}

/// The run's delivery figures.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub delivered_unacked: u64,
    pub seq_errors: u64,
}

/// Checks every socket: each must have received every acked message to its user exactly once,
/// and its seqs (events and own acks) must be exactly 1, 2, … with no repeat. `users` is the
/// number of users in the run (indexes below it).
pub fn check(sockets: &mut [SocketRecord], users: usize) -> Outcome {
    let mut expected_by_user: Vec<Vec<u64>> = vec![Vec::new(); users];
    for socket in sockets.iter() {
        for &(receiver, key) in &socket.acked {
            if let Some(list) = expected_by_user.get_mut(receiver) {
                list.push(key);
            }
        }
    }
    for list in &mut expected_by_user {
        list.sort_unstable();
        list.dedup();
    }
    let mut outcome = Outcome::default();
    for socket in sockets.iter_mut() {
        let expected = expected_by_user
            .get(socket.user)
            .map(Vec::as_slice)
            .unwrap_or_default();
        outcome.expected += expected.len() as u64;
        socket.deliveries.sort_unstable();
        let before = socket.deliveries.len();
        socket.deliveries.dedup();
        outcome.duplicates += (before - socket.deliveries.len()) as u64;
        let matched = count_common(expected, &socket.deliveries);
        outcome.delivered += matched;
        outcome.lost += expected.len() as u64 - matched;
        outcome.delivered_unacked += socket.deliveries.len() as u64 - matched;
        outcome.seq_errors += socket.out_of_order + seq_faults(&mut socket.seqs);
    }
    outcome
}

/// How many values two sorted, deduplicated slices share.
fn count_common(a: &[u64], b: &[u64]) -> u64 {
    let (mut i, mut j, mut common) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                common += 1;
                i += 1;
                j += 1;
            }
        }
    }
    common
}

/// Seqs seen twice plus seqs missing from 1 to the highest seen (a fresh user starts at 1).
fn seq_faults(seqs: &mut Vec<u64>) -> u64 {
    seqs.sort_unstable();
    let before = seqs.len();
    seqs.dedup();
    let repeated = (before - seqs.len()) as u64;
    let highest = seqs.last().copied().unwrap_or(0);
    let below_one = seqs.iter().take_while(|&&s| s == 0).count() as u64;
    let missing = highest - (seqs.len() as u64 - below_one);
    repeated + missing + below_one
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two users in a ring: user 0 (sender 0) sends k = 0, 1, 2 to user 1 and user 1 (sender 1)
    /// sends k = 0 to user 0.
    fn ring() -> Vec<SocketRecord> {
        let mut a = SocketRecord::new(0);
        let mut b = SocketRecord::new(1);
        a.acked(&[1], key(0, 0), 1);
        b.delivered(key(0, 0), 1);
        b.acked(&[0], key(1, 0), 2);
        a.delivered(key(1, 0), 2);
        a.acked(&[1], key(0, 1), 3);
        b.delivered(key(0, 1), 3);
        a.acked(&[1], key(0, 2), 4);
        b.delivered(key(0, 2), 4);
        vec![a, b]
    }

    #[test]
    fn a_clean_run_passes() {
        let outcome = check(&mut ring(), 2);
        assert_eq!(
            outcome,
            Outcome {
                expected: 4,
                delivered: 4,
                ..Outcome::default()
            }
        );
    }

    #[test]
    fn a_missing_delivery_is_lost_and_leaves_a_seq_gap() {
        let mut sockets = ring();
        sockets[1].deliveries.retain(|&k| k != key(0, 1));
        sockets[1].seqs.retain(|&s| s != 3);
        let outcome = check(&mut sockets, 2);
        assert_eq!((outcome.lost, outcome.delivered), (1, 3));
        assert_eq!(outcome.seq_errors, 1, "seq 3 of user 1 is missing");
    }

    #[test]
    fn a_repeated_delivery_is_a_duplicate_and_a_seq_fault() {
        let mut sockets = ring();
        sockets[1].delivered(key(0, 2), 4);
        let outcome = check(&mut sockets, 2);
        assert_eq!(outcome.duplicates, 1);
        assert_eq!(outcome.delivered, 4);
        // Seq 4 is seen twice, and the second event did not move the seq forward.
        assert_eq!(outcome.seq_errors, 2);
    }

    #[test]
    fn events_out_of_order_are_counted() {
        let mut record = SocketRecord::new(0);
        record.delivered(key(1, 1), 2);
        record.delivered(key(1, 0), 1);
        let outcome = check(&mut [record], 2);
        assert_eq!(outcome.seq_errors, 1);
        assert_eq!(outcome.delivered_unacked, 2, "nothing was acked");
    }

    #[test]
    fn a_group_message_is_owed_to_every_other_member() {
        let mut sender = SocketRecord::new(0);
        sender.other_event(1); // the group's `created`
        sender.acked(&[1, 2], key(0, 0), 2);
        let mut one = SocketRecord::new(1);
        one.other_event(1);
        one.delivered(key(0, 0), 2);
        let mut two = SocketRecord::new(2);
        two.other_event(1);
        let outcome = check(&mut [sender, one, two], 3);
        assert_eq!(
            (outcome.expected, outcome.delivered, outcome.lost),
            (2, 1, 1)
        );
        assert_eq!(outcome.seq_errors, 0, "membership events fill their seqs");
    }

    #[test]
    fn every_socket_of_a_receiver_must_get_the_message() {
        let mut sender = SocketRecord::new(0);
        sender.acked(&[1], key(0, 0), 1);
        let mut first = SocketRecord::new(1);
        first.delivered(key(0, 0), 1);
        let second = SocketRecord::new(1);
        let outcome = check(&mut [sender, first, second], 2);
        assert_eq!(
            (outcome.expected, outcome.delivered, outcome.lost),
            (2, 1, 1)
        );
    }
}
