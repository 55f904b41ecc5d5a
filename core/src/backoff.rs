//! Exponential back-off between attempts that resets after a success (the caller sleeps). The
//! one back-off of the project: peer links, the edge agent's route feed and links, and the
//! Kubernetes backend's retries all use it.

use std::time::Duration;

use rand::Rng;

/// Delays that double from `min` to at most `max`, and start over from `min` once an attempt
/// succeeds. With [`Backoff::with_jitter`], each delay is drawn uniformly from `min / 2` up to
/// that doubling cap ("full jitter"), so that many sites losing one peer do not redial it in
/// step.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    jitter: bool,
}

impl Backoff {
    /// Starts at `min`, doubling up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
            jitter: false,
        }
    }

    /// The same, with full jitter.
    pub fn with_jitter(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// The cap of the next delay: `min` doubled once per failed attempt, at most `max`.
    pub fn cap(&self) -> Duration {
        self.delay_after(self.attempt)
    }

    /// The delay (without jitter) after `failures` earlier failures: `min` doubled that many
    /// times, at most `max`. For callers that count attempts themselves (per object).
    pub fn delay_after(&self, failures: u32) -> Duration {
        self.min
            .saturating_mul(1u32 << failures.min(16))
            .min(self.max)
    }

    /// The delay before the next attempt (and doubles the one after).
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.cap();
        self.attempt = self.attempt.saturating_add(1);
        if !self.jitter {
            return cap;
        }
        let lo = self.min / 2;
        let span = cap.saturating_sub(lo).as_millis() as u64;
        lo + Duration::from_millis(rand::rng().random_range(0..=span))
    }

    /// An attempt succeeded: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_starts_over_after_a_success() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(5_000));
        let first: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert_eq!(
            first,
            [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000].map(ms)
        );
        b.reset();
        assert_eq!(b.next_delay(), ms(100));
        assert_eq!(b.next_delay(), ms(200));
    }

    #[test]
    fn jitter_stays_between_half_the_minimum_and_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1_000)).with_jitter();
        for i in 0..50 {
            let cap = b.cap();
            let d = b.next_delay();
            assert!(
                d >= ms(50) && d <= cap && cap <= ms(1_000),
                "attempt {i}: {d:?}"
            );
        }
        assert_eq!(b.cap(), ms(1_000));
        b.reset();
        assert_eq!(b.cap(), ms(100));
        assert!(b.next_delay() <= ms(100));
    }
}
