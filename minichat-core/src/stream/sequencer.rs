//! The delivery rule of one subscriber, with no I/O: which event goes out next, in seq order,
//! without gaps or duplicates.
//!
//! A [`Sequencer`] remembers the last seq its reader has been given (or acknowledged, for its own
//! sends, or that predates it) and the reader's own acknowledged sends ahead of that. For each
//! event it answers an [`Action`]; the caller does the I/O (reading storage, writing a frame) and
//! then commits what it delivered with [`Sequencer::delivered`]. The answers never change the
//! state, so a caller that is interrupted between asking and committing loses nothing.
//!
//! Seq-less events (typing, read receipts, presence) are not part of the stream: they always pass.

use crate::model::Seq;
use std::collections::BTreeSet;

/// Own sends acknowledged ahead of the stream that a sequencer remembers. Own sends are
/// rate-limited far below it; one beyond it is delivered again from storage instead of dropped.
pub const MAX_PENDING_OWN: usize = 1024;

/// What to do with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Hand it to the reader now, then commit it with [`Sequencer::delivered`].
    Deliver,
    /// The reader has it already (or sent it itself): drop it.
    Drop,
    /// Seqs are missing before it: read the stored events with a seq above `after` and below
    /// `before` first, then ask again about this event with [`Sequencer::live_after_fill`].
    Fill { after: Seq, before: Seq },
}

/// The per-reader state of the delivery guarantee (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequencer {
    /// Every seq up to this one is covered: delivered, acknowledged, or before the start.
    last: Seq,
    /// The reader's own acknowledged sends above `last + 1` (never `last + 1` itself: that one
    /// is absorbed into `last` at once).
    own: BTreeSet<Seq>,
}

impl Sequencer {
    /// A reader that has everything up to `last`.
    pub fn new(last: Seq) -> Sequencer {
        Sequencer {
            last,
            own: BTreeSet::new(),
        }
    }

    /// Where a stream starts, given the `since` its reader asked for and the newest stored seq
    /// (read *after* subscribing): without `since`, at the newest; a `since` beyond the newest (a
    /// reader that kept a seq from before the data was reset) is taken as the newest, or every
    /// event up to it would be dropped.
    pub fn resume(since: Option<Seq>, current: Seq) -> Sequencer {
        Sequencer::new(since.map_or(current, |since| since.max(0).min(current)))
    }

    /// The seq up to which the reader has everything: what it resumes from.
    pub fn last_seq(&self) -> Seq {
        self.last
    }

    /// How many own acknowledged sends ahead of the stream are remembered.
    pub fn pending_own(&self) -> usize {
        self.own.len()
    }

    fn covered(&self, seq: Seq) -> bool {
        seq <= self.last || self.own.contains(&seq)
    }

    /// What to do with an event that arrived live.
    pub fn live(&self, seq: Option<Seq>) -> Action {
        match seq {
            None => Action::Deliver,
            Some(seq) if self.covered(seq) => Action::Drop,
            Some(seq) if seq > self.last.saturating_add(1) => Action::Fill {
                after: self.last,
                before: seq,
            },
            Some(_) => Action::Deliver,
        }
    }

    /// What to do with a live event once the gap before it was read from storage: whatever
    /// storage did not have is given up (storage is the truth), so it is never `Fill`.
    pub fn live_after_fill(&self, seq: Option<Seq>) -> Action {
        match seq {
            Some(seq) if self.covered(seq) => Action::Drop,
            _ => Action::Deliver,
        }
    }

    /// What to do with an event read from storage (a replay page, or a gap being filled).
    pub fn stored(&self, seq: Seq) -> Action {
        if self.covered(seq) {
            Action::Drop
        } else {
            Action::Deliver
        }
    }

    /// The event with `seq` was handed to the reader.
    pub fn delivered(&mut self, seq: Seq) {
        if seq > self.last {
            self.last = seq;
            self.normalise();
        }
    }

    /// The reader's own send was stored with `seq` in its stream and acknowledged to it: it
    /// counts as delivered, and its live or stored copy is dropped.
    pub fn acknowledged(&mut self, seq: Seq) {
        if seq == self.last.saturating_add(1) {
            self.last = seq;
            self.normalise();
        } else if seq > self.last && self.own.len() < MAX_PENDING_OWN {
            self.own.insert(seq);
        }
    }

    /// Forgets own seqs at or below `last`, and moves `last` over the own seqs that come next.
    fn normalise(&mut self) {
        // Own seqs at or below `last` are covered by it anyway.
        self.own = self.own.split_off(&self.last.saturating_add(1));
        while self.own.remove(&self.last.saturating_add(1)) {
            self.last += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds live seqs through a sequencer whose storage holds every seq (gapless), and
    /// returns what the reader got, in order, marking which came from storage.
    fn run(seq: &mut Sequencer, live: &[Seq]) -> Vec<(Seq, bool)> {
        let mut out = Vec::new();
        for &s in live {
            match seq.live(Some(s)) {
                Action::Deliver => {
                    seq.delivered(s);
                    out.push((s, false));
                }
                Action::Drop => {}
                Action::Fill { after, before } => {
                    for stored in after + 1..before {
                        if seq.stored(stored) == Action::Deliver {
                            seq.delivered(stored);
                            out.push((stored, true));
                        }
                    }
                    if seq.live_after_fill(Some(s)) == Action::Deliver {
                        seq.delivered(s);
                        out.push((s, false));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn in_order_events_are_delivered() {
        let mut seq = Sequencer::new(0);
        assert_eq!(
            run(&mut seq, &[1, 2, 3]),
            vec![(1, false), (2, false), (3, false)]
        );
        assert_eq!(seq.last_seq(), 3);
    }

    #[test]
    fn a_duplicate_is_dropped() {
        let mut seq = Sequencer::new(0);
        assert_eq!(seq.live(Some(1)), Action::Deliver);
        seq.delivered(1);
        assert_eq!(seq.live(Some(1)), Action::Drop);
        assert_eq!(run(&mut seq, &[2, 2, 1, 3]), vec![(2, false), (3, false)]);
    }

    #[test]
    fn a_gap_is_filled_from_storage_first() {
        let mut seq = Sequencer::new(2);
        assert_eq!(
            seq.live(Some(5)),
            Action::Fill {
                after: 2,
                before: 5
            }
        );
        // Asking changes nothing: asking again gives the same answer.
        assert_eq!(
            seq.live(Some(5)),
            Action::Fill {
                after: 2,
                before: 5
            }
        );
        assert_eq!(
            run(&mut seq, &[5, 3, 4, 6]),
            vec![(3, true), (4, true), (5, false), (6, false)]
        );
    }

    #[test]
    fn what_storage_lacks_is_given_up_after_a_fill() {
        let mut seq = Sequencer::new(0);
        assert_eq!(
            seq.live(Some(3)),
            Action::Fill {
                after: 0,
                before: 3
            }
        );
        // Storage had only 1.
        seq.delivered(1);
        assert_eq!(seq.live_after_fill(Some(3)), Action::Deliver);
        seq.delivered(3);
        assert_eq!(seq.live(Some(2)), Action::Drop);
        assert_eq!(seq.live_after_fill(Some(3)), Action::Drop);
    }

    #[test]
    fn an_own_ack_exactly_next_advances_the_stream() {
        let mut seq = Sequencer::new(4);
        seq.acknowledged(5);
        assert_eq!(seq.last_seq(), 5);
        assert_eq!(seq.pending_own(), 0);
        assert_eq!(seq.live(Some(5)), Action::Drop);
        assert_eq!(seq.live(Some(6)), Action::Deliver);
    }

    #[test]
    fn an_own_ack_ahead_of_the_stream_is_skipped_when_reached() {
        let mut seq = Sequencer::new(0);
        // Own sends 3 and 4 acknowledged while 1 and 2 (from others) are still on their way.
        seq.acknowledged(3);
        seq.acknowledged(4);
        assert_eq!(seq.last_seq(), 0);
        assert_eq!(seq.pending_own(), 2);
        assert_eq!(
            seq.live(Some(3)),
            Action::Drop,
            "its own send is not echoed"
        );
        // 5 arrives first: only 1 and 2 are missing.
        assert_eq!(
            seq.live(Some(5)),
            Action::Fill {
                after: 0,
                before: 5
            }
        );
        assert_eq!(seq.stored(1), Action::Deliver);
        seq.delivered(1);
        assert_eq!(seq.stored(2), Action::Deliver);
        seq.delivered(2);
        // Reaching 2 absorbed the own sends 3 and 4.
        assert_eq!(seq.last_seq(), 4);
        assert_eq!(seq.pending_own(), 0);
        assert_eq!(seq.stored(3), Action::Drop);
        assert_eq!(seq.stored(4), Action::Drop);
        assert_eq!(seq.live_after_fill(Some(5)), Action::Deliver);
    }

    #[test]
    fn an_own_ack_at_or_below_the_stream_is_ignored() {
        let mut seq = Sequencer::new(7);
        seq.acknowledged(3);
        seq.acknowledged(7);
        assert_eq!(seq.last_seq(), 7);
        assert_eq!(seq.pending_own(), 0);
    }

    #[test]
    fn remembered_own_sends_are_bounded() {
        let mut seq = Sequencer::new(0);
        for s in 0..MAX_PENDING_OWN as Seq + 10 {
            seq.acknowledged(s + 2);
        }
        assert_eq!(seq.pending_own(), MAX_PENDING_OWN);
        // One not remembered is delivered from storage rather than lost.
        let beyond = MAX_PENDING_OWN as Seq + 2;
        assert_eq!(seq.stored(beyond), Action::Deliver);
        assert_eq!(seq.stored(beyond - 1), Action::Drop);
        seq.delivered(1);
        assert_eq!(seq.last_seq(), beyond - 1);
        assert_eq!(seq.pending_own(), 0);
    }

    #[test]
    fn a_replay_overlapping_live_events_delivers_each_once() {
        // Subscribed, then the replay read 1..=4 while 3, 4 and 5 were queued live.
        let mut seq = Sequencer::resume(Some(0), 4);
        let mut got = Vec::new();
        for stored in 1..=4 {
            if seq.stored(stored) == Action::Deliver {
                seq.delivered(stored);
                got.push((stored, true));
            }
        }
        got.extend(run(&mut seq, &[3, 4, 5]));
        assert_eq!(
            got,
            vec![(1, true), (2, true), (3, true), (4, true), (5, false)]
        );
    }

    #[test]
    fn since_is_clamped_to_the_newest_stored_seq() {
        assert_eq!(Sequencer::resume(Some(1000), 3).last_seq(), 3);
        let mut seq = Sequencer::resume(Some(1000), 3);
        assert_eq!(
            seq.live(Some(4)),
            Action::Deliver,
            "not dropped as below 1000"
        );
        seq.delivered(4);
        assert_eq!(Sequencer::resume(Some(2), 3).last_seq(), 2);
        assert_eq!(Sequencer::resume(None, 3).last_seq(), 3);
        assert_eq!(Sequencer::resume(Some(-5), 3).last_seq(), 0);
    }

    #[test]
    fn seq_less_events_pass_through_without_moving_the_stream() {
        let mut seq = Sequencer::new(2);
        seq.acknowledged(5);
        assert_eq!(seq.live(None), Action::Deliver);
        assert_eq!(seq.live_after_fill(None), Action::Deliver);
        assert_eq!(seq.last_seq(), 2);
        assert_eq!(seq.live(Some(3)), Action::Deliver);
    }
}
