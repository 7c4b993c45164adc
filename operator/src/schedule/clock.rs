//! The schedule controller's notion of "now", injectable so tests can run a minute-granular cron
//! schedule in seconds or jump over hours of downtime.

use std::sync::Mutex;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};

/// A source of the current time and of how long (in real time) to wait for a future instant.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
    /// Real time until this clock shows `t` (zero if it already has).
    fn real_duration_until(&self, t: DateTime<Utc>) -> StdDuration;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
    fn real_duration_until(&self, t: DateTime<Utc>) -> StdDuration {
        (t - Utc::now()).to_std().unwrap_or(StdDuration::ZERO)
    }
}

/// A clock that starts at a chosen instant, runs `speed` times faster than real time, and can
/// be moved forward (to simulate downtime). For tests and demos.
#[derive(Debug)]
pub struct ScaledClock {
    start_real: Instant,
    speed: f64,
    base: Mutex<DateTime<Utc>>,
}

impl ScaledClock {
    /// A clock showing `start` now and advancing `speed` clock seconds per real second.
    pub fn new(start: DateTime<Utc>, speed: f64) -> Self {
        Self {
            start_real: Instant::now(),
            speed: if speed > 0.0 { speed } else { 1.0 },
            base: Mutex::new(start),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut base = self.base.lock().unwrap_or_else(|e| e.into_inner());
        *base += by;
    }

    /// The configured speed (clock seconds per real second).
    pub fn speed(&self) -> f64 {
        self.speed
    }
}

impl Clock for ScaledClock {
    fn now(&self) -> DateTime<Utc> {
        let base = *self.base.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = self.start_real.elapsed().as_secs_f64() * self.speed;
        base + Duration::microseconds((elapsed * 1e6) as i64)
    }
    fn real_duration_until(&self, t: DateTime<Utc>) -> StdDuration {
        let clock_secs = (t - self.now()).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6;
        if clock_secs <= 0.0 {
            StdDuration::ZERO
        } else {
            StdDuration::from_secs_f64(clock_secs / self.speed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scaled_clock_runs_fast_and_can_jump_forward() {
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let clock = ScaledClock::new(start, 60.0);
        let wait = clock.real_duration_until(start + Duration::minutes(1));
        assert!(
            wait <= StdDuration::from_secs(1) && wait > StdDuration::from_millis(900),
            "{wait:?}"
        );
        clock.advance(Duration::hours(2));
        assert!(clock.now() >= start + Duration::hours(2));
        assert_eq!(clock.real_duration_until(start), StdDuration::ZERO);
    }
}
