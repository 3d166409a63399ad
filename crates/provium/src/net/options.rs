//! Impairment settings and the checks the Lua layer runs on what a test passes:
//! durations (`"50ms"`, `"1.5s"`, or a number of seconds), loss probabilities and
//! option names, each failing with a [`NetError`] that names the network.

use std::time::Duration;

use super::NetError;

/// The options `net:impair{…}` accepts.
pub const IMPAIR_OPTIONS: &[&str] = &["from", "to", "latency", "jitter", "loss", "seed"];
/// The options `net:partition{…}` accepts in its table form.
pub const PARTITION_OPTIONS: &[&str] = &["from", "to"];

/// What a segment or one direction does to the frames crossing it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Impairment {
    /// Added to every frame's transit time.
    pub latency: Duration,
    /// Each frame's delay is drawn uniformly from `latency ± jitter` (never below zero,
    /// never earlier than the previous frame of the same direction).
    pub jitter: Duration,
    /// Probability in [0, 1] that a frame is dropped.
    pub loss: f64,
}

impl Impairment {
    /// Whether frames pass untouched.
    pub fn is_none(&self) -> bool {
        self.latency.is_zero() && self.jitter.is_zero() && self.loss == 0.0
    }

    /// Whether frames are held back at all.
    pub fn delays(&self) -> bool {
        !self.latency.is_zero() || !self.jitter.is_zero()
    }
}

/// A duration as a test gave it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DurationValue<'a> {
    /// `"50ms"`, `"1.5s"`, `"200us"`, `"0"` (no unit: seconds).
    Text(&'a str),
    /// A Lua number: seconds.
    Seconds(f64),
}

/// Parses the `option` (`latency`, `jitter`) of network `network`.
pub fn parse_duration(
    network: &str,
    option: &str,
    value: DurationValue<'_>,
) -> Result<Duration, NetError> {
    let bad = |shown: String, reason: &str| NetError::BadDuration {
        network: network.to_string(),
        option: option.to_string(),
        value: shown,
        reason: reason.to_string(),
    };
    let (seconds, shown) = match value {
        DurationValue::Seconds(seconds) => (seconds, seconds.to_string()),
        DurationValue::Text(text) => {
            let trimmed = text.trim();
            let split = trimmed
                .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
                .unwrap_or(trimmed.len());
            // The number may use an exponent (`1e3ms`); no unit starts with `e`.
            let (number, unit) = trimmed.split_at(split);
            let unit_scale = match unit.trim() {
                "" | "s" => 1.0,
                "ms" => 1e-3,
                "us" | "µs" => 1e-6,
                "ns" => 1e-9,
                other => {
                    return Err(bad(
                        text.to_string(),
                        &format!("unknown unit {other:?}; use ns, us, ms or s"),
                    ))
                }
            };
            let number: f64 = number
                .parse()
                .map_err(|_| bad(text.to_string(), "no number before the unit"))?;
            (number * unit_scale, text.to_string())
        }
    };
    if seconds.is_nan() {
        return Err(bad(shown, "not a number"));
    }
    if seconds < 0.0 {
        return Err(NetError::NegativeDuration {
            network: network.to_string(),
            option: option.to_string(),
            value: shown,
        });
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| bad(shown, "too large"))
}

/// Checks a loss probability of network `network`.
pub fn check_loss(network: &str, loss: f64) -> Result<f64, NetError> {
    if (0.0..=1.0).contains(&loss) {
        Ok(loss)
    } else {
        Err(NetError::LossOutOfRange {
            network: network.to_string(),
            value: loss,
        })
    }
}

/// Fails on the first of `given` that is not in `known`.
pub fn check_options<'a>(
    network: &str,
    given: impl IntoIterator<Item = &'a str>,
    known: &[&str],
) -> Result<(), NetError> {
    match given.into_iter().find(|key| !known.contains(key)) {
        None => Ok(()),
        Some(option) => Err(NetError::UnknownOption {
            network: network.to_string(),
            option: option.to_string(),
            known: known.join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(value: &str) -> Result<Duration, NetError> {
        parse_duration("lan", "latency", DurationValue::Text(value))
    }

    #[test]
    fn durations_with_units_and_plain_seconds() {
        assert_eq!(text("50ms").unwrap(), Duration::from_millis(50));
        assert_eq!(text("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(text(" 200 us ").unwrap(), Duration::from_micros(200));
        assert_eq!(text("250µs").unwrap(), Duration::from_micros(250));
        assert_eq!(text("10ns").unwrap(), Duration::from_nanos(10));
        assert_eq!(text("0").unwrap(), Duration::ZERO);
        assert_eq!(text("2").unwrap(), Duration::from_secs(2));
        assert_eq!(text("1e1ms").unwrap(), Duration::from_millis(10));
        let seconds = parse_duration("lan", "jitter", DurationValue::Seconds(0.005)).unwrap();
        assert_eq!(seconds, Duration::from_millis(5));
    }

    #[test]
    fn bad_durations_name_network_option_and_value() {
        for value in ["fast", "50 parsecs", "ms", "", "1.2.3s"] {
            let err = text(value).unwrap_err();
            assert!(
                matches!(&err, NetError::BadDuration { network, option, .. }
                    if network == "lan" && option == "latency"),
                "{value:?}: {err:?}"
            );
            assert!(err.to_string().contains("network lan"), "{err}");
        }
        let nan = parse_duration("lan", "jitter", DurationValue::Seconds(f64::NAN));
        assert!(matches!(nan, Err(NetError::BadDuration { .. })));
        let huge = parse_duration("lan", "jitter", DurationValue::Seconds(1e300));
        assert!(matches!(huge, Err(NetError::BadDuration { .. })));
    }

    #[test]
    fn negative_durations_refused() {
        let err = text("-5ms").unwrap_err();
        assert!(matches!(err, NetError::NegativeDuration { .. }), "{err:?}");
        assert!(err.to_string().contains("latency = -5ms"), "{err}");
        let err = parse_duration("lan", "jitter", DurationValue::Seconds(-0.1)).unwrap_err();
        assert!(matches!(err, NetError::NegativeDuration { .. }), "{err:?}");
    }

    #[test]
    fn loss_must_be_a_probability() {
        assert_eq!(check_loss("lan", 0.0).unwrap(), 0.0);
        assert_eq!(check_loss("lan", 1.0).unwrap(), 1.0);
        for value in [-0.01, 1.01, f64::NAN, f64::INFINITY] {
            let err = check_loss("lan", value).unwrap_err();
            assert!(matches!(err, NetError::LossOutOfRange { .. }), "{value}");
        }
        assert!(check_loss("wan", 2.0)
            .unwrap_err()
            .to_string()
            .contains("network wan: loss = 2"));
    }

    #[test]
    fn unknown_options_listed_with_the_known_ones() {
        assert!(check_options("lan", ["latency", "from"], IMPAIR_OPTIONS).is_ok());
        let err = check_options("lan", ["latency", "lantency"], IMPAIR_OPTIONS).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("\"lantency\""), "{message}");
        assert!(message.contains("latency, jitter, loss"), "{message}");
    }
}
