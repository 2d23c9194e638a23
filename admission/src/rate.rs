//! Rates ("10Mbit", "2MB") and a token bucket to enforce them.
//!
//! # Rate strings
//! A number (an integer, or a decimal such as `1.5`), an optional SI prefix, and a unit, all
//! per second:
//! - prefixes are decimal SI, case-insensitive: `k` = 1000, `M` = 10^6, `G` = 10^9, `T` =
//!   10^12; `Ki`, `Mi`, `Gi`, `Ti` are the binary ones (1024^n);
//! - the unit says bits or bytes by its spelling, never by the case of the prefix: `bit`
//!   (any case: `Mbit`, `mbit`, `MBit`) is bits; a capital `B` is bytes (`MB`, `kB`, `KiB`);
//! - a lone lowercase `b` and the `bps`/`Bps` spellings are refused: `Mb` is megabits to some
//!   people and megabytes to others, and `tc` reads `mbps` as mega*bytes*. The error says
//!   which spelling to use instead;
//! - an optional `/s` may follow (`10Mbit/s`).
//!
//! Values are rounded down to whole bytes per second; zero is refused.
use std::fmt;

use serde::{Deserialize, Serialize};
use std::str::FromStr;
use std::time::{Duration, Instant};

const NANOS_PER_SEC: u128 = 1_000_000_000;
/// Longest rate string parsed: a real one is under 20 characters, and a bound keeps a
/// hostile claim from costing more than a glance.
const MAX_RATE_LEN: usize = 32;

/// A transfer rate in bytes per second, parsed from strings such as `"10Mbit"` or `"2MB"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Rate {
    bytes_per_sec: u64,
}

impl Rate {
    /// A rate of `bytes_per_sec`; `None` for zero.
    pub fn from_bytes_per_sec(bytes_per_sec: u64) -> Option<Self> {
        (bytes_per_sec > 0).then_some(Self { bytes_per_sec })
    }

    /// Bytes per second, at least 1.
    pub fn bytes_per_sec(self) -> u64 {
        self.bytes_per_sec
    }
}

/// Why a rate string was refused. Each message names the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RateError {
    #[error("empty rate: write a number and a unit, e.g. 10Mbit or 2MB")]
    Empty,
    #[error("rate is over {MAX_RATE_LEN} characters: write e.g. 10Mbit or 2MB")]
    TooLong,
    #[error("rate does not start with a number: write e.g. 10Mbit or 2MB")]
    NoNumber,
    #[error("rate has no unit: add bit (bits) or B (bytes), e.g. 10Mbit or 2MB")]
    NoUnit,
    #[error(
        "unknown rate unit {0:?}: use bit for bits or B for bytes, with k, M, G, T, Ki, Mi, Gi or Ti"
    )]
    UnknownUnit(String),
    #[error("ambiguous rate unit {0:?}: write bit for bits (10Mbit) or B for bytes (2MB)")]
    AmbiguousUnit(String),
    #[error("rate rounds to 0 bytes per second: use at least 8bit or 1B")]
    Zero,
    #[error("rate is too large: stay under 16 EB per second")]
    Overflow,
}

impl FromStr for Rate {
    type Err = RateError;

    fn from_str(text: &str) -> Result<Self, RateError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(RateError::Empty);
        }
        if text.len() > MAX_RATE_LEN {
            return Err(RateError::TooLong);
        }
        let number_end = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (mantissa, scale) = parse_decimal(&text[..number_end])?;
        let unit = text[number_end..].trim_start();
        let unit = unit.strip_suffix("/s").unwrap_or(unit);
        let (multiplier, bits) = parse_unit(unit)?;
        // value = mantissa / scale * multiplier [/ 8], in exact integers.
        let divisor = scale * if bits { 8 } else { 1 };
        let bytes = mantissa
            .checked_mul(multiplier)
            .ok_or(RateError::Overflow)?
            / divisor;
        let bytes = u64::try_from(bytes).map_err(|_| RateError::Overflow)?;
        Rate::from_bytes_per_sec(bytes).ok_or(RateError::Zero)
    }
}

/// Parses `12` or `1.25` into (125, 100): an exact fraction with no floating point.
fn parse_decimal(number: &str) -> Result<(u128, u128), RateError> {
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') {
        return Err(RateError::NoNumber);
    }
    let mut mantissa: u128 = 0;
    let mut scale: u128 = 1;
    for c in int.bytes() {
        mantissa = mantissa * 10 + u128::from(c - b'0');
    }
    for c in frac.bytes() {
        mantissa = mantissa * 10 + u128::from(c - b'0');
        scale *= 10;
    }
    // At most 32 digits in all (MAX_RATE_LEN), so neither can overflow u128 (39 digits).
    Ok((mantissa, scale))
}

/// Splits a unit such as `Mbit` or `KiB` into (multiplier, is_bits).
fn parse_unit(unit: &str) -> Result<(u128, bool), RateError> {
    if unit.is_empty() {
        return Err(RateError::NoUnit);
    }
    let lower = unit.to_ascii_lowercase();
    if lower.ends_with("bps") || unit.ends_with('b') && !lower.ends_with("bit") {
        return Err(RateError::AmbiguousUnit(unit.to_owned()));
    }
    let (prefix, bits) = if lower.ends_with("bit") {
        (&unit[..unit.len() - 3], true)
    } else if let Some(prefix) = unit.strip_suffix('B') {
        (prefix, false)
    } else {
        return Err(RateError::UnknownUnit(unit.to_owned()));
    };
    let multiplier: u128 = match prefix.to_ascii_lowercase().as_str() {
        "" => 1,
        "k" => 1_000,
        "m" => 1_000_000,
        "g" => 1_000_000_000,
        "t" => 1_000_000_000_000,
        "ki" => 1 << 10,
        "mi" => 1 << 20,
        "gi" => 1 << 30,
        "ti" => 1 << 40,
        _ => return Err(RateError::UnknownUnit(unit.to_owned())),
    };
    Ok((multiplier, bits))
}

impl fmt::Display for Rate {
    /// The largest decimal byte unit that is exact, so that the text parses back to the same
    /// rate: `1250000B` prints as `1250KB`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut value = self.bytes_per_sec;
        let mut units = ["B", "KB", "MB", "GB", "TB"].iter();
        let mut unit = units.next().expect("non-empty");
        for next in units {
            if !value.is_multiple_of(1000) {
                break;
            }
            value /= 1000;
            unit = next;
        }
        write!(f, "{value}{unit}")
    }
}

impl TryFrom<String> for Rate {
    type Error = RateError;
    fn try_from(text: String) -> Result<Self, RateError> {
        text.parse()
    }
}

impl From<Rate> for String {
    fn from(rate: Rate) -> String {
        rate.to_string()
    }
}

/// A token bucket: `rate` units per second, holding at most `burst` units.
///
/// The unit is whatever the caller counts (bytes for shaping, connections for admission).
/// The level is kept in nano-units (1 unit = 10^9) and refilled by `elapsed_nanos * rate`,
/// so refills are exact integers and never drift however often the bucket is polled.
///
/// A request larger than `burst` is not refused forever: it is granted once the bucket is
/// full, and the level goes below zero (debt) so that later requests wait it off. The long-run
/// rate is kept, and a sender pacing a 64 KiB frame through a 16 KiB burst still makes progress.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate_per_sec: u64,
    burst: u64,
    /// Nano-units; negative while in debt.
    level: i128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. A `rate_per_sec` of 0 never refills (only the initial burst is there).
    pub fn new(rate_per_sec: u64, burst: u64, now: Instant) -> Self {
        Self {
            rate_per_sec,
            burst,
            level: nanos(burst),
            last: now,
        }
    }

    /// A full bucket shaping `rate`, with `burst_bytes` of burst.
    pub fn for_rate(rate: Rate, burst_bytes: u64, now: Instant) -> Self {
        Self::new(rate.bytes_per_sec(), burst_bytes, now)
    }

    /// Units per second.
    pub fn rate_per_sec(&self) -> u64 {
        self.rate_per_sec
    }

    /// Most units the bucket holds.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Takes `n` units if they are there (see the type's docs for `n > burst`).
    pub fn try_take(&mut self, now: Instant, n: u64) -> bool {
        self.refill(now);
        if self.level < self.needed(n) {
            return false;
        }
        self.level = self.level.saturating_sub(nanos(n));
        true
    }

    /// How long until `try_take(_, n)` would succeed: zero if it would now,
    /// [`Duration::MAX`] if it never will (a rate of 0 and not enough left).
    pub fn time_until(&self, now: Instant, n: u64) -> Duration {
        let missing = self.needed(n).saturating_sub(self.level_at(now));
        if missing <= 0 {
            return Duration::ZERO;
        }
        if self.rate_per_sec == 0 {
            return Duration::MAX;
        }
        // Round up: waking a nanosecond early would find the bucket still short.
        let rate = i128::from(self.rate_per_sec);
        let wait_nanos = (missing + rate - 1) / rate;
        let secs = u64::try_from(wait_nanos / NANOS_PER_SEC as i128).unwrap_or(u64::MAX);
        let sub = (wait_nanos % NANOS_PER_SEC as i128) as u32;
        Duration::new(secs, sub)
    }

    /// True when the bucket is full at `now`: an idle entry holding no state worth keeping.
    pub fn is_full(&self, now: Instant) -> bool {
        self.level_at(now) >= nanos(self.burst)
    }

    /// Units a request of `n` needs present, capped at a full bucket.
    fn needed(&self, n: u64) -> i128 {
        nanos(n.min(self.burst))
    }

    fn level_at(&self, now: Instant) -> i128 {
        // An `Instant` earlier than the last one (callers racing) adds nothing.
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let added = elapsed.saturating_mul(u128::from(self.rate_per_sec));
        let added = i128::try_from(added).unwrap_or(i128::MAX);
        self.level.saturating_add(added).min(nanos(self.burst))
    }

    fn refill(&mut self, now: Instant) {
        self.level = self.level_at(now);
        self.last = self.last.max(now);
    }
}

fn nanos(units: u64) -> i128 {
    i128::from(units) * NANOS_PER_SEC as i128
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(text: &str) -> u64 {
        text.parse::<Rate>()
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .bytes_per_sec()
    }

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(rate("10Mbit"), 1_250_000);
        assert_eq!(rate("8mbit"), 1_000_000);
        assert_eq!(rate("2MB"), 2_000_000);
        assert_eq!(rate("512KB"), 512_000);
        assert_eq!(rate("512kB"), 512_000);
        assert_eq!(rate("100kbit"), 12_500);
        assert_eq!(rate("1Gbit"), 125_000_000);
        assert_eq!(rate("1.5Mbit"), 187_500);
        assert_eq!(rate("64KiB"), 65_536);
        assert_eq!(rate(" 10 Mbit/s "), 1_250_000);
        assert_eq!(rate("1000B"), 1000);
        assert_eq!(rate("12bit"), 1, "rounds down to whole bytes");
    }

    #[test]
    fn refuses_with_a_reason() {
        let err = |text: &str| text.parse::<Rate>().unwrap_err();
        assert_eq!(err(""), RateError::Empty);
        assert_eq!(err("Mbit"), RateError::NoNumber);
        assert_eq!(err("."), RateError::NoNumber);
        assert_eq!(err("1.2.3MB"), RateError::NoNumber);
        assert_eq!(err("10"), RateError::NoUnit);
        assert_eq!(err("10Mb"), RateError::AmbiguousUnit("Mb".into()));
        assert_eq!(err("10mbps"), RateError::AmbiguousUnit("mbps".into()));
        assert_eq!(err("10MBps"), RateError::AmbiguousUnit("MBps".into()));
        assert_eq!(err("10Xbit"), RateError::UnknownUnit("Xbit".into()));
        assert_eq!(
            err("10 furlongs"),
            RateError::UnknownUnit("furlongs".into())
        );
        assert_eq!(err("0MB"), RateError::Zero);
        assert_eq!(err("7bit"), RateError::Zero);
        assert_eq!(err("99999999999999999999TB"), RateError::Overflow);
        assert_eq!(err(&"1".repeat(40)), RateError::TooLong);
        assert!(err("10Mb").to_string().contains("10Mbit"));
    }

    #[test]
    fn display_parses_back() {
        for text in ["10Mbit", "2MB", "1B", "123456B", "1Gbit", "64KiB"] {
            let parsed: Rate = text.parse().unwrap();
            assert_eq!(
                parsed.to_string().parse::<Rate>().unwrap(),
                parsed,
                "{text}"
            );
        }
        assert_eq!("10Mbit".parse::<Rate>().unwrap().to_string(), "1250KB");
    }

    #[test]
    fn bucket_refills_exactly_without_drift() {
        let t0 = Instant::now();
        // 3 units per second: each unit takes 333_333_333.33 ns, which floats would smear.
        let mut bucket = TokenBucket::new(3, 3, t0);
        assert!(bucket.try_take(t0, 3));
        assert!(!bucket.try_take(t0, 1));
        // 3 million polls of 1 µs each add exactly 9 units, capped at the burst of 3.
        let mut now = t0;
        let mut taken = 0;
        for _ in 0..3_000_000 {
            now += Duration::from_micros(1);
            if bucket.try_take(now, 1) {
                taken += 1;
            }
        }
        assert_eq!(taken, 9, "3 s at 3/s");
    }

    #[test]
    fn time_until_is_the_exact_wait() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(1000, 1500, t0);
        assert_eq!(bucket.time_until(t0, 1500), Duration::ZERO);
        assert!(bucket.try_take(t0, 1500));
        let wait = bucket.time_until(t0, 500);
        assert_eq!(wait, Duration::from_millis(500));
        assert!(!bucket.try_take(t0 + wait - Duration::from_nanos(1), 500));
        assert!(bucket.try_take(t0 + wait, 500));
    }

    #[test]
    fn oversized_requests_go_into_debt_instead_of_starving() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(1000, 1000, t0);
        // 4000 > burst: granted on a full bucket, then 3 s of debt to repay.
        assert!(bucket.try_take(t0, 4000));
        assert_eq!(bucket.time_until(t0, 1), Duration::from_millis(3001));
        assert_eq!(
            bucket.time_until(t0, 4000),
            Duration::from_secs(4),
            "needs a full bucket"
        );
        assert!(!bucket.try_take(t0 + Duration::from_secs(3), 1));
        assert!(bucket.try_take(t0 + Duration::from_millis(3001), 1));
    }

    #[test]
    fn zero_rate_never_refills_and_time_goes_backwards_safely() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(0, 2, t0);
        assert!(bucket.try_take(t0, 2));
        assert_eq!(bucket.time_until(t0, 1), Duration::MAX);
        let mut bucket = TokenBucket::new(10, 10, t0 + Duration::from_secs(5));
        assert!(
            bucket.try_take(t0, 10),
            "an earlier now neither panics nor refills"
        );
        assert!(!bucket.try_take(t0, 1));
        assert!(!bucket.is_full(t0 + Duration::from_secs(5)));
        assert!(bucket.is_full(t0 + Duration::from_secs(6)));
    }

    #[test]
    fn huge_values_saturate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(u64::MAX, u64::MAX, t0);
        // 2^40 s times u64::MAX units/s overflows even u128 nano-units: it must saturate.
        assert!(bucket.try_take(t0 + Duration::from_secs(1 << 40), u64::MAX));
        assert!(bucket.try_take(t0 + Duration::from_secs(1 << 41), u64::MAX));
        assert!(bucket.time_until(t0, u64::MAX) < Duration::from_secs(2));
    }
}
