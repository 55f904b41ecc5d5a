//! How fast one peer may make this site work: a token bucket over the items of its messages
//! (records, changes and heads, plus one per message), refilled at `sync.peer_rate` per second
//! up to `sync.peer_burst`. Pure: the session sleeps for what [`Rate::take`] returns.
//!
//! A message is never refused for its cost (an honest snapshot may be large): it is admitted
//! as soon as the bucket is not in debt, and its cost may take the bucket below zero. The next
//! message then waits until the debt is paid, so over any period a peer gets at most the rate
//! plus one burst and one message, however it splits what it sends.

use std::time::{Duration, Instant};

use multimesh_proto::catalog::v1::sync_message::Body;

/// A peer's allowance.
#[derive(Debug)]
pub struct Rate {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Rate {
    /// A full bucket at `now`.
    pub fn new(per_second: u64, burst: u64, now: Instant) -> Self {
        Self {
            per_second: per_second.max(1) as f64,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            last: now,
        }
    }

    /// Charges a message of `cost` items arriving at `now`; returns how long to wait before
    /// processing it (zero unless earlier messages left the bucket in debt).
    pub fn take(&mut self, cost: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        let wait = if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_second)
        };
        self.tokens -= cost as f64;
        wait
    }
}

/// What a message costs: one, plus its records, changes and heads.
pub fn cost(body: Option<&Body>) -> u64 {
    let items = match body {
        Some(Body::Snapshot(s)) => s.records.len() + s.certificates.len(),
        Some(Body::Delta(d)) => d.changes.len() + d.certificates.len(),
        Some(Body::Heartbeat(h)) => h.heads.len() + h.certificates.len(),
        Some(Body::Hello(h)) => h.heads.len() + h.certificates.len(),
        Some(Body::Ack(_)) | Some(Body::Nack(_)) | None => 0,
    };
    1 + items as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_burst_passes_at_once_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut r = Rate::new(100, 200, t0);
        // 200 items at once: no wait.
        for _ in 0..20 {
            assert_eq!(r.take(10, t0), Duration::ZERO);
        }
        // The bucket is empty, not in debt: the next message passes, and puts it in debt.
        assert_eq!(r.take(50, t0), Duration::ZERO);
        // 50 items of debt at 100/s: the following message waits 0.5 s.
        assert_eq!(r.take(1, t0), ms(500));
        // Half a second later the debt (51 items) is paid but for 1 item: 10 ms more.
        assert_eq!(r.take(1, t0 + ms(500)), ms(10));
    }

    #[test]
    fn a_large_message_is_admitted_and_paid_for_afterwards() {
        let t0 = Instant::now();
        let mut r = Rate::new(1000, 1000, t0);
        assert_eq!(r.take(50_000, t0), Duration::ZERO);
        assert_eq!(r.take(1, t0), ms(49_000));
        // Waiting does not accumulate beyond the burst.
        let mut r = Rate::new(1000, 1000, t0);
        assert_eq!(r.take(1, t0 + Duration::from_secs(3600)), Duration::ZERO);
        assert_eq!(r.take(1000, t0 + Duration::from_secs(3600)), Duration::ZERO);
        assert_eq!(r.take(1, t0 + Duration::from_secs(3600)), ms(1));
    }

    #[test]
    fn over_any_period_a_peer_gets_the_rate_plus_one_burst() {
        // A peer sending one-item messages as fast as it can, served as the session would:
        // each waits what take() says, and time moves on by that much.
        let t0 = Instant::now();
        let mut r = Rate::new(500, 1000, t0);
        let mut now = t0;
        let mut served = 0u64;
        while now < t0 + Duration::from_secs(10) {
            now += r.take(1, now);
            served += 1;
        }
        // 10 s at 500/s plus the burst of 1000, and the one message admitted in debt.
        assert!((5995..=6005).contains(&served), "{served}");
    }

    #[test]
    fn every_item_of_a_message_counts() {
        use multimesh_proto::catalog::v1 as wire;
        let delta = Body::Delta(wire::Delta {
            changes: vec![wire::Change::default(); 7],
            certificates: vec![vec![]; 2],
            ..Default::default()
        });
        assert_eq!(cost(Some(&delta)), 10);
        assert_eq!(cost(Some(&Body::Ack(wire::Ack { msg_id: 1 }))), 1);
    }
}
