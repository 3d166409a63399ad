//! The messages of `assert_eq` and `assert_contains`: values rendered so a person can
//! see the difference — plain text as is, text with control characters quoted,
//! binary as a window of hex, a number against a string with their types — and long
//! haystacks shortened. The assertions themselves are in `prelude.lua`; the test
//! records in `framework.rs`.

use mlua::{Function, Lua, Table, Value};

/// Haystacks longer than this are shortened in `assert_contains` messages.
const HAYSTACK_SHOWN: usize = 100;
/// Binary strings longer than this are shown as a window of hex.
const HEX_SHOWN: usize = 64;

/// A value as Lua's `tostring` shows it (strings as they are, lossily decoded).
pub(super) fn lua_tostring(tostring: &Function, value: Value) -> mlua::Result<String> {
    match value {
        Value::String(s) => Ok(s.to_string_lossy()),
        other => tostring
            .call::<mlua::String>(other)
            .map(|s| s.to_string_lossy()),
    }
}

/// Installs the message builders `prelude.lua` calls on failure.
pub(super) fn register_hooks(lua: &Lua, hooks: &Table, tostring: &Function) -> mlua::Result<()> {
    let ts = tostring.clone();
    hooks.set(
        "eq_message",
        lua.create_function(move |_, (expected, actual, msg): (Value, Value, Value)| {
            let (expected_shown, actual_shown) = render_pair(&ts, &expected, &actual)?;
            Ok(format!(
                "{}expected {expected_shown}, got {actual_shown}",
                message_prefix(&ts, msg)?
            ))
        })?,
    )?;
    let ts = tostring.clone();
    hooks.set(
        "contains_failure",
        lua.create_function(move |_, (haystack, needle, msg): (Value, Value, Value)| {
            let prefix = message_prefix(&ts, msg)?;
            let Some(hay) = text_of(&ts, &haystack)? else {
                return Ok(Some(format!(
                    "{prefix}assert_contains: haystack must be a string, got {}",
                    haystack.type_name()
                )));
            };
            let Some(needle) = text_of(&ts, &needle)? else {
                return Ok(Some(format!(
                    "{prefix}assert_contains: needle must be a string, got {}",
                    needle.type_name()
                )));
            };
            if contains(&hay, &needle) {
                return Ok(None);
            }
            Ok(Some(format!(
                "{prefix}expected {} to contain {}",
                shorten_haystack(&hay),
                quote(&needle)
            )))
        })?,
    )?;
    Ok(())
}

fn message_prefix(tostring: &Function, msg: Value) -> mlua::Result<String> {
    match msg {
        Value::Nil => Ok(String::new()),
        other => Ok(format!("{}: ", lua_tostring(tostring, other)?)),
    }
}

/// The bytes of a string, or of a value with `__tostring` (the exec output wrappers).
fn text_of(tostring: &Function, value: &Value) -> mlua::Result<Option<Vec<u8>>> {
    match value {
        Value::String(s) => Ok(Some(s.as_bytes().to_vec())),
        Value::Table(_) | Value::UserData(_) => {
            let has_tostring = match value {
                Value::Table(t) => t
                    .metatable()
                    .is_some_and(|m| m.contains_key("__tostring").unwrap_or(false)),
                Value::UserData(u) => u
                    .metatable()
                    .is_ok_and(|m| m.contains("__tostring").unwrap_or(false)),
                _ => false,
            };
            if !has_tostring {
                return Ok(None);
            }
            let s: mlua::String = tostring.call(value.clone())?;
            Ok(Some(s.as_bytes().to_vec()))
        }
        _ => Ok(None),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// How a string is best shown in a failure message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum StrKind {
    /// Printable text: shown raw, as `print` would.
    Plain,
    /// Text with newlines or tabs: shown quoted with escapes so whitespace is visible.
    Text,
    /// Anything else (NULs, control bytes, invalid UTF-8): quoted hex bytes.
    Binary,
}

fn classify(bytes: &[u8]) -> StrKind {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return StrKind::Binary;
    };
    let mut kind = StrKind::Plain;
    for c in text.chars() {
        if matches!(c, '\n' | '\t' | '\r') {
            kind = StrKind::Text;
        } else if c.is_control() {
            return StrKind::Binary;
        }
    }
    kind
}

/// `"a\tb\n"`: escapes for whitespace, quotes and backslashes.
fn quote(bytes: &[u8]) -> String {
    if classify(bytes) == StrKind::Binary {
        return hex(bytes);
    }
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `"01 00 00 00"`; long strings show their first bytes and their length.
fn hex(bytes: &[u8]) -> String {
    let shown: Vec<String> = bytes
        .iter()
        .take(HEX_SHOWN)
        .map(|b| format!("{b:02x}"))
        .collect();
    if bytes.len() > HEX_SHOWN {
        format!("\"{} …\" ({} bytes)", shown.join(" "), bytes.len())
    } else {
        format!("\"{}\"", shown.join(" "))
    }
}

fn shorten_haystack(bytes: &[u8]) -> String {
    if classify(bytes) == StrKind::Binary || bytes.len() <= HAYSTACK_SHOWN {
        return quote(bytes);
    }
    let text = String::from_utf8_lossy(bytes);
    let head: String = text.chars().take(HAYSTACK_SHOWN).collect();
    let quoted = quote(head.as_bytes());
    format!("{}…\" ({} bytes)", &quoted[..quoted.len() - 1], bytes.len())
}

/// Renders the two sides of a failed `assert_eq`. Strings are shown as `print` would
/// unless either side needs escaping, in which case both sides use the same (quoted
/// or hex) form so they can be compared by eye; values of different types that print
/// the same are annotated with their types.
fn render_pair(
    tostring: &Function,
    expected: &Value,
    actual: &Value,
) -> mlua::Result<(String, String)> {
    if let (Value::String(e), Value::String(a)) = (expected, actual) {
        let (e, a) = (e.as_bytes(), a.as_bytes());
        let kind = classify(&e).max(classify(&a));
        return Ok(match kind {
            StrKind::Plain => (
                String::from_utf8_lossy(&e).into_owned(),
                String::from_utf8_lossy(&a).into_owned(),
            ),
            StrKind::Text => (quote(&e), quote(&a)),
            StrKind::Binary => (hex(&e), hex(&a)),
        });
    }
    let render = |v: &Value| -> mlua::Result<String> {
        match v {
            Value::String(s) => {
                let bytes = s.as_bytes();
                Ok(match classify(&bytes) {
                    StrKind::Plain => String::from_utf8_lossy(&bytes).into_owned(),
                    StrKind::Text => quote(&bytes),
                    StrKind::Binary => hex(&bytes),
                })
            }
            other => lua_tostring(tostring, other.clone()),
        }
    };
    let (e, a) = (render(expected)?, render(actual)?);
    if e == a {
        return Ok((
            format!("{e} ({})", lua_type(expected)),
            format!("{a} ({})", lua_type(actual)),
        ));
    }
    Ok((e, a))
}

/// The name Lua's `type()` gives (mlua distinguishes integers; Lua does not).
fn lua_type(value: &Value) -> &'static str {
    match value {
        Value::Integer(_) | Value::Number(_) => "number",
        other => other.type_name(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(classify(b"hello world"), StrKind::Plain);
        assert_eq!(classify("héllo".as_bytes()), StrKind::Plain);
        assert_eq!(classify(b"ok\n"), StrKind::Text);
        assert_eq!(classify(b"a\0b"), StrKind::Binary);
        assert_eq!(classify(&[0xff, 0xfe]), StrKind::Binary);
        assert_eq!(classify(b"\x1b[31m"), StrKind::Binary);
    }

    #[test]
    fn quoting_and_hex() {
        assert_eq!(quote(b"a\"b\\c\n"), r#""a\"b\\c\n""#);
        assert_eq!(hex(&[1, 0, 0xff]), "\"01 00 ff\"");
        let long = vec![7u8; 100];
        let shown = hex(&long);
        assert!(shown.ends_with("07 …\" (100 bytes)"), "{shown}");
    }

    #[test]
    fn long_haystacks_are_shortened() {
        let hay = "x".repeat(1000);
        let shown = shorten_haystack(hay.as_bytes());
        assert_eq!(
            shown,
            format!("\"{}…\" (1000 bytes)", "x".repeat(HAYSTACK_SHOWN))
        );
        assert_eq!(shorten_haystack(b"short"), "\"short\"");
    }

    #[test]
    fn pairs_render_in_a_shared_form() {
        let lua = Lua::new();
        let tostring: Function = lua.globals().get("tostring").unwrap();
        let s = |b: &[u8]| Value::String(lua.create_string(b).unwrap());
        let pair = |a: Value, b: Value| render_pair(&tostring, &a, &b).unwrap();
        assert_eq!(pair(s(b"abc"), s(b"abd")), ("abc".into(), "abd".into()));
        assert_eq!(
            pair(s(b"ok"), s(b"ok\n")),
            ("\"ok\"".into(), "\"ok\\n\"".into())
        );
        assert_eq!(
            pair(s(b"A"), s(b"A\0")),
            ("\"41\"".into(), "\"41 00\"".into())
        );
        assert_eq!(
            pair(Value::Integer(1), s(b"1")),
            ("1 (number)".into(), "1 (string)".into())
        );
        assert_eq!(
            pair(Value::Number(1.5), Value::Nil),
            ("1.5".into(), "nil".into())
        );
    }
}
