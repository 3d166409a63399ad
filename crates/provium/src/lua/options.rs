//! Option tables (`vm:boot(opts)`, `vm:spawn(opts)`, `vm:wait_until(fn, opts)`, …),
//! checked in one place: a table or nil, names for keys, and no key the operation does
//! not know — a misspelt option must never be silently ignored.

use mlua::{Table, Value};
use thiserror::Error;

use super::vm_args::describe;

/// An options table that does not fit; the caller adds the operation and subject.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum OptionError {
    #[error("{what} must be a table, not {found}")]
    NotATable { what: String, found: String },
    #[error("option keys are names, not {found}")]
    BadKey { found: String },
    #[error("unknown option '{key}' (known options: {})", .known.join(", "))]
    Unknown {
        key: String,
        known: &'static [&'static str],
    },
    #[error("cannot read the options: {reason}")]
    Unreadable { reason: String },
}

/// Checks `value` (the options argument, described as `what`): nil gives `None`, a
/// table whose every key is in `known` gives the table.
pub fn read(
    value: &Value,
    what: &str,
    known: &'static [&'static str],
) -> Result<Option<Table>, OptionError> {
    let table = match value {
        Value::Nil => return Ok(None),
        Value::Table(table) => table.clone(),
        other => {
            return Err(OptionError::NotATable {
                what: what.to_string(),
                found: describe(other),
            })
        }
    };
    for pair in table.clone().pairs::<Value, Value>() {
        let (key, _) = pair.map_err(|e| OptionError::Unreadable {
            reason: e.to_string(),
        })?;
        let key = match &key {
            Value::String(k) => k.to_string_lossy(),
            other => {
                return Err(OptionError::BadKey {
                    found: describe(other),
                })
            }
        };
        if !known.contains(&key.as_str()) {
            return Err(OptionError::Unknown { key, known });
        }
    }
    Ok(Some(table))
}

/// One option's value (nil when absent).
pub fn get(table: &Option<Table>, key: &str) -> Result<Value, OptionError> {
    match table {
        None => Ok(Value::Nil),
        Some(table) => table
            .raw_get::<Value>(key)
            .map_err(|e| OptionError::Unreadable {
                reason: e.to_string(),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlua::Lua;

    #[test]
    fn unknown_keys_and_non_tables_are_refused() {
        let lua = Lua::new();
        const KNOWN: &[&str] = &["timeout", "interval"];
        let eval = |code: &str| lua.load(code).eval::<Value>().unwrap();
        assert_eq!(read(&Value::Nil, "argument 2", KNOWN), Ok(None));
        assert!(read(&eval("{ timeout = 1 }"), "argument 2", KNOWN)
            .unwrap()
            .is_some());
        assert_eq!(
            read(&eval("{ timout = 1 }"), "argument 2", KNOWN)
                .unwrap_err()
                .to_string(),
            "unknown option 'timout' (known options: timeout, interval)"
        );
        assert_eq!(
            read(&eval("{ 1 }"), "argument 2", KNOWN)
                .unwrap_err()
                .to_string(),
            "option keys are names, not integer"
        );
        assert_eq!(
            read(&eval("'fast'"), "argument 2 (options)", KNOWN)
                .unwrap_err()
                .to_string(),
            "argument 2 (options) must be a table, not a string"
        );
    }
}
