//! A byte-rate limit shared by every job of a run, so that the backup as a whole never
//! reads the source disks faster than `--rate-limit`.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

/// A token bucket holding at most one second's worth of bytes.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_second: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(bytes_per_second: u64) -> RateLimiter {
        let rate = bytes_per_second as f64;
        RateLimiter { bytes_per_second: rate, state: Mutex::new((rate, Instant::now())) }
    }

    /// Waits until `bytes` may be read.
    pub fn acquire(&self, bytes: usize) {
        let wait = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let (tokens, last) = &mut *state;
            let now = Instant::now();
            *tokens =
                (*tokens + now.duration_since(*last).as_secs_f64() * self.bytes_per_second).min(self.bytes_per_second);
            *last = now;
            *tokens -= bytes as f64;
            // A debt is paid by sleeping; later callers see it and wait their turn too.
            if *tokens < 0.0 { Duration::from_secs_f64(-*tokens / self.bytes_per_second) } else { Duration::ZERO }
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// Parses RATE: bytes per second with an optional unit (`50MiB`, `200M`, `1G`, `4096`).
/// SI units are powers of 1000, IEC units (`KiB`, `MiB`, `GiB`) powers of 1024.
pub fn parse_rate(text: &str) -> Result<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| anyhow::anyhow!("rate {text:?}: expected a number with an optional unit such as 50MiB"))?;
    let unit = unit.trim().trim_end_matches("/s");
    let factor: f64 = match unit {
        "" | "B" => 1.0,
        "K" | "k" | "KB" | "kB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => bail!("rate {text:?}: unknown unit {other:?} (use B, K, M, G, KiB, MiB or GiB)"),
    };
    let rate = (number * factor).round();
    if !(1.0..=1e15).contains(&rate) {
        bail!("rate {text:?} is out of range");
    }
    Ok(rate as u64)
}

/// Parses DURATION: a number with a unit, `s`, `m`, `h` or `d` (`26h`, `90m`, `2d`).
pub fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let number: u64 =
        number.parse().map_err(|_| anyhow::anyhow!("duration {text:?}: expected something like 26h, 90m or 2d"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => bail!("duration {text:?}: unit must be s, m, h or d"),
    };
    Ok(Duration::from_secs(number * seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_durations_parse_as_the_contract_writes_them() {
        assert_eq!(parse_rate("50MiB").unwrap(), 50 << 20);
        assert_eq!(parse_rate("200M").unwrap(), 200_000_000);
        assert_eq!(parse_rate("4096").unwrap(), 4096);
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10XB").is_err());
        assert_eq!(parse_duration("26h").unwrap(), Duration::from_secs(26 * 3600));
        assert_eq!(parse_duration("90m").unwrap(), Duration::from_secs(90 * 60));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(2 * 86400));
        assert!(parse_duration("2 weeks").is_err());
    }

    #[test]
    fn limiter_holds_the_rate() {
        let limiter = RateLimiter::new(1_000_000);
        let start = Instant::now();
        // One second's burst is free, the next 500 kB must take about half a second.
        for _ in 0..15 {
            limiter.acquire(100_000);
        }
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
    }
}
