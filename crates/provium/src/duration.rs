//! Durations as users write them (`90`, `500ms`, `30s`, `10m`, `2h`) and as messages
//! show them (`30s`, `500ms`, `1.5s`): one parser for the CLI, `provium.toml` and Lua.

use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("invalid duration '{input}': expected seconds (90) or a number with a unit: ms, s, m or h (500ms, 30s, 10m, 2h)")]
pub struct DurationError {
    pub input: String,
}

/// Parses `90` (seconds), `1.5` , `500ms`, `30s`, `10m`, `2h`. Zero is allowed (callers
/// decide what it means: "no timeout" for `--timeout 0`).
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = || DurationError {
        input: input.to_string(),
    };
    let text = input.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| err())?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(err()),
    };
    if !seconds.is_finite() || !(0.0..=1e9).contains(&seconds) {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// From seconds given as a number (Lua numbers, TOML integers and floats).
pub fn from_seconds(seconds: f64) -> Result<Duration, DurationError> {
    if seconds.is_finite() && (0.0..=1e9).contains(&seconds) {
        Ok(Duration::from_secs_f64(seconds))
    } else {
        Err(DurationError {
            input: seconds.to_string(),
        })
    }
}

/// `30s`, `500ms`, `1.5s`: whole seconds without decimals, under a second in ms.
pub fn show(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else if millis < 1000 {
        format!("{millis}ms")
    } else {
        let text = format!("{:.3}", duration.as_secs_f64());
        format!("{}s", text.trim_end_matches('0').trim_end_matches('.'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_parse_and_show() {
        assert_eq!(parse("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        for bad in ["", "s", "-1", "5x", "1e3", "ten"] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(show(Duration::from_secs(300)), "300s");
        assert_eq!(show(Duration::from_millis(500)), "500ms");
        assert_eq!(show(Duration::from_millis(1500)), "1.5s");
        assert_eq!(from_seconds(2.5), Ok(Duration::from_millis(2500)));
        assert!(from_seconds(-1.0).is_err());
    }
}
