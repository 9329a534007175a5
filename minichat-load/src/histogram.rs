//! Latency recording: an HdrHistogram of microseconds per task, merged at the end, and its
//! percentiles in milliseconds for the report.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::Duration;

/// Highest latency recorded exactly: one hour; longer ones are recorded as one hour.
const HIGHEST_MICROS: u64 = 3_600_000_000;

/// Latencies of one kind (ack, delivery, REST answer), three significant digits.
#[derive(Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    pub fn new() -> Latency {
        Latency(
            Histogram::new_with_bounds(1, HIGHEST_MICROS, 3)
                .expect("constant bounds are valid: 1 <= low, high >= 2 * low, 3 digits"),
        )
    }

    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(micros.max(1));
    }

    pub fn merge(&mut self, other: &Latency) {
        // Both histograms have the same bounds, so adding never fails; saturate regardless.
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The percentiles, or `None` when nothing was recorded.
    pub fn summary(&self) -> Option<Summary> {
        if self.0.is_empty() {
            return None;
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        let at = |q: f64| ms(self.0.value_at_quantile(q));
        Some(Summary {
            count: self.0.len(),
            mean: (self.0.mean() / 10.0).round() / 100.0,
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: ms(self.0.max()),
        })
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[cfg(test)]
mod tests {
    use super::Latency;
    use std::time::Duration;

    #[test]
    fn percentiles_come_from_what_was_recorded() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        for ms in 1..=99 {
            a.record(Duration::from_millis(ms));
        }
        b.record(Duration::from_secs(2));
        a.merge(&b);
        let summary = a.summary().expect("recorded");
        assert_eq!(summary.count, 100);
        assert!((summary.p50 - 50.0).abs() < 0.1, "{summary:?}");
        assert!((summary.max - 2000.0).abs() < 2.0, "{summary:?}");
        assert!(Latency::new().summary().is_none());
    }
}
