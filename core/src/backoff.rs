//! Exponential back-off between attempts that resets after a success (pure: the caller sleeps).

use std::time::Duration;

/// Delays that double from `min` to at most `max`, and start over from `min` once an attempt
/// succeeds.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `min`, doubling up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The delay before the next attempt (and doubles the one after).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// An attempt succeeded: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
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
}
