//! Counters and rates for the admin plane and `/metrics`.
//!
//! Totals are plain relaxed atomics bumped where the work happens (once per actor batch for the
//! queues, once per publish for connections). Rates are derived from the totals by one sampler
//! task ([`sample_forever`]) every [`SAMPLE_EVERY`], so readers never compute anything under a
//! lock and the hot paths pay one `fetch_add` each.

use crate::broker::Broker;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often rates are recomputed (also the window they average over).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// A per-second rate of a monotonic total, updated by the sampler.
#[derive(Debug, Default)]
pub struct Rate {
    last_total: AtomicU64,
    per_second_bits: AtomicU64,
}

impl Rate {
    /// Records the total now; `elapsed` since the previous sample.
    pub fn sample(&self, total: u64, elapsed: Duration) {
        let last = self.last_total.swap(total, Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        let rate = if seconds > 0.0 {
            total.saturating_sub(last) as f64 / seconds
        } else {
            0.0
        };
        self.per_second_bits
            .store(rate.to_bits(), Ordering::Relaxed);
    }

    pub fn per_second(&self) -> f64 {
        f64::from_bits(self.per_second_bits.load(Ordering::Relaxed))
    }
}

/// Broker-wide totals since start (they survive the queues and connections they came from).
#[derive(Debug, Default)]
pub struct GlobalCounters {
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub acked: AtomicU64,
    pub publish_rate: Rate,
    pub deliver_rate: Rate,
    pub ack_rate: Rate,
}

impl GlobalCounters {
    pub fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Recomputes every rate each [`SAMPLE_EVERY`] until the broker is dropped.
pub async fn sample_forever(broker: std::sync::Weak<Broker>) {
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    loop {
        ticker.tick().await;
        let Some(broker) = broker.upgrade() else {
            return;
        };
        let now = Instant::now();
        sample_once(&broker, now - last);
        last = now;
    }
}

fn sample_once(broker: &Arc<Broker>, elapsed: Duration) {
    let totals = &broker.totals;
    let get = GlobalCounters::get;
    totals.publish_rate.sample(get(&totals.published), elapsed);
    totals.deliver_rate.sample(get(&totals.delivered), elapsed);
    totals.ack_rate.sample(get(&totals.acked), elapsed);
    for name in broker.vhost_names() {
        let Some(vhost) = broker.vhost(&name) else {
            continue;
        };
        let queues: Vec<_> = vhost.read().queues.values().cloned().collect();
        for q in queues {
            let c = &q.counters;
            c.publish_rate.sample(get(&c.published), elapsed);
            c.deliver_rate.sample(get(&c.delivered), elapsed);
            c.ack_rate.sample(get(&c.acked), elapsed);
        }
    }
    broker.for_each_connection(|_, entry| {
        entry
            .stats
            .publish_rate
            .sample(get(&entry.stats.published), elapsed);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_the_growth_of_its_total_per_second() {
        let rate = Rate::default();
        rate.sample(100, Duration::from_secs(5));
        assert_eq!(rate.per_second(), 20.0);
        rate.sample(100, Duration::from_secs(5));
        assert_eq!(rate.per_second(), 0.0);
        rate.sample(150, Duration::from_millis(500));
        assert_eq!(rate.per_second(), 100.0);
        rate.sample(150, Duration::ZERO);
        assert_eq!(rate.per_second(), 0.0);
    }
}
