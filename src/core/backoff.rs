//! Exponential backoff with jitter, for both queues' retries and for riding out outages.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with full-range jitter: `base * 2^(attempt-1)`, scaled by a random
/// factor in [0.5, 1.5), capped at `max`. Jitter keeps many failing jobs from retrying in step.
pub fn backoff(base: Duration, attempt: u32, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let factor: f64 = rand::rng().random_range(0.5..1.5);
    exp.mul_f64(factor).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_is_capped() {
        let base = Duration::from_secs(1);
        for _ in 0..100 {
            let d1 = backoff(base, 1, Duration::from_secs(600));
            assert!(d1 >= Duration::from_millis(500) && d1 < Duration::from_millis(1500));
            let d4 = backoff(base, 4, Duration::from_secs(600));
            assert!(d4 >= Duration::from_secs(4) && d4 < Duration::from_secs(12));
            assert_eq!(
                backoff(base, 30, Duration::from_secs(60)),
                Duration::from_secs(60)
            );
        }
    }
}
