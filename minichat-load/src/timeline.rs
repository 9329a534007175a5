//! Delivery latency second by second: when the slow deliveries happened.
//!
//! A run's percentiles say how long the tail is, not whether it is spread over the run
//! (queueing at that load) or packed into a few seconds (a stall of the server, the database or
//! the machine). Each reader counts its deliveries per second of their *scheduled* send time,
//! with the slowest one and how many took longer than [`SLOW`]; the run merges them and reports
//! every second, and the summary names the worst ones.

use serde::Serialize;
use std::time::Duration;

/// A delivery slower than this counts as slow: the delivery-latency target of BENCHMARKS.md
/// (p99 at 5,000 messages/s).
pub const SLOW: Duration = Duration::from_millis(10);

/// How many of the worst seconds the readable summary names.
const WORST_SHOWN: usize = 3;

/// One reader's (or, merged, the run's) deliveries by second of their scheduled send time.
#[derive(Clone, Debug, Default)]
pub struct Timeline(Vec<Second>);

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Second {
    deliveries: u64,
    slow: u64,
    max_micros: u64,
}

/// One second of the run, as reported.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SecondFigures {
    /// Whole seconds from the run's first scheduled send.
    pub second: usize,
    pub deliveries: u64,
    /// Deliveries that took longer than [`SLOW`].
    pub over_10ms: u64,
    pub max_ms: f64,
}

impl Timeline {
    /// A delivery scheduled `scheduled` after the run's start that took `latency`.
    pub fn record(&mut self, scheduled: Duration, latency: Duration) {
        let index = usize::try_from(scheduled.as_secs()).unwrap_or(usize::MAX);
        if index >= self.0.len() {
            // A run lasts its --duration; a far-off timestamp is a bad frame, not a second.
            if index > 24 * 3600 {
                return;
            }
            self.0.resize(index + 1, Second::default());
        }
        let second = &mut self.0[index];
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        second.deliveries += 1;
        second.slow += u64::from(latency > SLOW);
        second.max_micros = second.max_micros.max(micros);
    }

    pub fn merge(&mut self, other: &Timeline) {
        if other.0.len() > self.0.len() {
            self.0.resize(other.0.len(), Second::default());
        }
        for (mine, theirs) in self.0.iter_mut().zip(&other.0) {
            mine.deliveries += theirs.deliveries;
            mine.slow += theirs.slow;
            mine.max_micros = mine.max_micros.max(theirs.max_micros);
        }
    }

    /// Every second, in order.
    pub fn seconds(&self) -> Vec<SecondFigures> {
        self.0
            .iter()
            .enumerate()
            .map(|(second, s)| SecondFigures {
                second,
                deliveries: s.deliveries,
                over_10ms: s.slow,
                max_ms: s.max_micros as f64 / 1000.0,
            })
            .collect()
    }
}

/// The line of the readable summary: how the slow deliveries spread over the run, and the worst
/// seconds (most slow deliveries first); `None` when nothing was slow.
pub fn describe(seconds: &[SecondFigures]) -> Option<String> {
    let slow: u64 = seconds.iter().map(|s| s.over_10ms).sum();
    if slow == 0 {
        return None;
    }
    let with_slow = seconds.iter().filter(|s| s.over_10ms > 0).count();
    let mut worst: Vec<&SecondFigures> = seconds.iter().filter(|s| s.over_10ms > 0).collect();
    worst.sort_by(|a, b| b.over_10ms.cmp(&a.over_10ms).then(a.second.cmp(&b.second)));
    let named: Vec<String> = worst
        .iter()
        .take(WORST_SHOWN)
        .map(|s| {
            format!(
                "{} ({} of {}, max {:.1} ms)",
                s.second, s.over_10ms, s.deliveries, s.max_ms
            )
        })
        .collect();
    Some(format!(
        "deliveries over {} ms: {slow} in {with_slow} of {} seconds; worst seconds {}",
        SLOW.as_millis(),
        seconds.len(),
        named.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn deliveries_are_counted_by_the_second_they_were_scheduled_in() {
        let mut a = Timeline::default();
        a.record(ms(200), ms(3));
        a.record(ms(2_500), ms(40));
        let mut b = Timeline::default();
        b.record(ms(999), ms(12));
        b.record(ms(2_001), ms(5));
        a.merge(&b);
        let seconds = a.seconds();
        assert_eq!(seconds.len(), 3);
        assert_eq!((seconds[0].deliveries, seconds[0].over_10ms), (2, 1));
        assert_eq!(seconds[0].max_ms, 12.0);
        assert_eq!((seconds[1].deliveries, seconds[1].over_10ms), (0, 0));
        assert_eq!((seconds[2].deliveries, seconds[2].over_10ms), (2, 1));
        assert_eq!(seconds[2].max_ms, 40.0);
        // Exactly the threshold is not slow.
        let mut c = Timeline::default();
        c.record(ms(0), SLOW);
        assert_eq!(c.seconds()[0].over_10ms, 0);
    }

    #[test]
    fn the_summary_names_the_seconds_with_most_slow_deliveries() {
        let mut t = Timeline::default();
        for _ in 0..3 {
            t.record(ms(1_100), ms(30));
        }
        t.record(ms(4_000), ms(50));
        t.record(ms(0), ms(1));
        let line = describe(&t.seconds()).expect("some were slow");
        assert_eq!(
            line,
            "deliveries over 10 ms: 4 in 2 of 5 seconds; worst seconds \
             1 (3 of 3, max 30.0 ms), 4 (1 of 1, max 50.0 ms)"
        );
        let mut quiet = Timeline::default();
        quiet.record(ms(0), ms(2));
        assert_eq!(describe(&quiet.seconds()), None);
    }
}
