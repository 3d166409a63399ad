//! Values VM methods hand to Lua: command-output string wrappers and JSON documents.
//!
//! `vm:exec()` output is a wrapper rather than a plain string so tests can write
//! `r.stdout.contains("x")` and `r.stdout.trim()` (called with a dot), while
//! `tostring(w)`, `w .. "x"`, `"x" .. w`, `#w` and `w.value` still give the raw bytes.

use std::rc::Rc;

use mlua::{AnyUserData, Lua, MultiValue, Table, UserDataFields, UserDataMethods, Value};

/// Raw command output (any bytes).
pub struct OutputString(Rc<[u8]>);

/// Registers the wrapper type with `lua`; run once per state before any wrapper is made.
pub fn register(lua: &Lua) -> mlua::Result<()> {
    lua.register_userdata_type::<OutputString>(|reg| {
        reg.add_meta_field("__name", "provium output");
        reg.add_meta_method("__index", |lua, this, key: Value| index(lua, &this.0, key));
        reg.add_meta_method("__tostring", |lua, this, ()| lua.create_string(&this.0));
        reg.add_meta_method("__len", |_, this, ()| Ok(this.0.len()));
        reg.add_meta_function("__concat", |lua, (left, right): (Value, Value)| {
            let mut joined = operand_bytes(&left, "concatenate")?;
            joined.extend(operand_bytes(&right, "concatenate")?);
            lua.create_string(joined)
        });
        reg.add_meta_function("__eq", |_, (left, right): (Value, Value)| {
            Ok(wrapped(&left).is_some_and(|l| wrapped(&right).is_some_and(|r| l == r)))
        });
    })
}

/// A new wrapper around `bytes`.
pub fn output_string(lua: &Lua, bytes: Vec<u8>) -> mlua::Result<AnyUserData> {
    lua.create_any_userdata(OutputString(bytes.into()))
}

fn wrapped(value: &Value) -> Option<Rc<[u8]>> {
    match value {
        Value::UserData(ud) => ud.borrow::<OutputString>().ok().map(|w| Rc::clone(&w.0)),
        _ => None,
    }
}

/// The bytes of a string-like operand, as Lua's `..` would take them.
fn operand_bytes(value: &Value, action: &str) -> mlua::Result<Vec<u8>> {
    if let Some(bytes) = wrapped(value) {
        return Ok(bytes.to_vec());
    }
    match value {
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        Value::Integer(_) | Value::Number(_) => Ok(value.to_string()?.into_bytes()),
        other => Err(mlua::Error::RuntimeError(format!(
            "attempt to {action} a {} value",
            other.type_name()
        ))),
    }
}

/// Drops a leading wrapper when the helper was called with a colon (`w:trim()`)
/// rather than a dot (`w.trim()`): `plain_arity` is the argument count of a dot call.
fn dot_args(args: MultiValue, plain_arity: usize) -> Vec<Value> {
    let mut args = args.into_vec();
    if args.len() == plain_arity + 1 && wrapped(&args[0]).is_some() {
        args.remove(0);
    }
    args
}

/// The keys an output wrapper answers itself (any other reaches `string`).
pub const OUTPUT_KEYS: [&str; 5] = ["value", "contains", "starts_with", "ends_with", "trim"];

fn index(lua: &Lua, bytes: &Rc<[u8]>, key: Value) -> mlua::Result<Value> {
    let Value::String(key) = key else {
        return Ok(Value::Nil);
    };
    let key = key.to_string_lossy();
    let predicate = |test: fn(&[u8], &[u8]) -> bool, name: &'static str| {
        let this = Rc::clone(bytes);
        lua.create_function(move |_, args: MultiValue| {
            let args = dot_args(args, 1);
            let needle = operand_bytes(args.first().unwrap_or(&Value::Nil), name)?;
            Ok(test(&this, &needle))
        })
    };
    let value = match key.as_str() {
        "value" => Value::String(lua.create_string(&bytes[..])?),
        "contains" => Value::Function(predicate(
            |hay, needle| needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle),
            "search for",
        )?),
        "starts_with" => Value::Function(predicate(|hay, p| hay.starts_with(p), "compare")?),
        "ends_with" => Value::Function(predicate(|hay, p| hay.ends_with(p), "compare")?),
        "trim" => {
            let this = Rc::clone(bytes);
            Value::Function(lua.create_function(move |lua, args: MultiValue| {
                dot_args(args, 0);
                lua.create_string(this.trim_ascii())
            })?)
        }
        other => string_method(lua, other)?,
    };
    Ok(value)
}

/// Any other key reaches the `string` library with wrappers turned into strings, so
/// `w:match(...)`, `w:find(...)` and `w:sub(...)` work as on a plain string.
fn string_method(lua: &Lua, name: &str) -> mlua::Result<Value> {
    let string: Table = lua.globals().get("string")?;
    let Value::Function(method) = string.get::<Value>(name)? else {
        return Ok(Value::Nil);
    };
    let unwrap = lua.create_function(move |lua, args: MultiValue| {
        let args = args
            .into_iter()
            .map(|arg| match wrapped(&arg) {
                Some(bytes) => lua.create_string(&bytes[..]).map(Value::String),
                None => Ok(arg),
            })
            .collect::<mlua::Result<MultiValue>>()?;
        method.call::<MultiValue>(args)
    })?;
    Ok(Value::Function(unwrap))
}

/// A parsed JSON document as Lua values: objects and arrays become tables, `null`
/// becomes `nil`, integers stay exact (above 2^63-1 as their two's-complement
/// pattern, like `provium.unpack("u64")`).
pub fn json_to_lua(lua: &Lua, json: &serde_json::Value) -> mlua::Result<Value> {
    use serde_json::Value as Json;
    Ok(match json {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Integer(i),
            (None, Some(u)) => Value::Integer(u as i64),
            _ => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(lua.create_string(s)?),
        Json::Array(items) => {
            let table = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                table.raw_set(i + 1, json_to_lua(lua, item)?)?;
            }
            Value::Table(table)
        }
        Json::Object(fields) => {
            let table = lua.create_table_with_capacity(0, fields.len())?;
            for (key, item) in fields {
                table.raw_set(key.as_str(), json_to_lua(lua, item)?)?;
            }
            Value::Table(table)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlua::Function;

    /// Calls the function `code` evaluates to with a wrapper around `bytes`.
    fn eval_with_wrapper(lua: &Lua, bytes: &[u8], code: &str) -> mlua::Result<Value> {
        let w = output_string(lua, bytes.to_vec())?;
        let f: Function = lua.load(code).eval()?;
        f.call(w)
    }

    fn lua() -> Lua {
        let lua = Lua::new();
        register(&lua).unwrap();
        lua
    }

    fn check(bytes: &[u8], code: &str) {
        let lua = lua();
        let ok = eval_with_wrapper(&lua, bytes, code).unwrap();
        assert_eq!(ok, Value::Boolean(true), "{code}");
    }

    #[test]
    fn wrappers_behave_like_their_string() {
        let text = b"  hello world  ";
        check(
            text,
            "return function(w) return w.contains('lo wo') and not w.contains('x') end",
        );
        check(
            text,
            "return function(w) return w.starts_with('  hel') and w.ends_with('  ') end",
        );
        check(
            text,
            "return function(w) return w.trim() == 'hello world' end",
        );
        check(
            text,
            "return function(w) return w:trim() == 'hello world' and w:contains('hello') end",
        );
        check(
            text,
            "return function(w) return tostring(w) == '  hello world  ' end",
        );
        check(
            text,
            "return function(w) return w .. '!' == '  hello world  !' end",
        );
        check(
            text,
            "return function(w) return '>' .. w == '>  hello world  ' end",
        );
        check(
            text,
            "return function(w) return 1 .. w == '1  hello world  ' end",
        );
        check(
            text,
            "return function(w) return #w == 15 and w.value == '  hello world  ' end",
        );
        check(
            text,
            "return function(w) return w:match('(%a+) world') == 'hello' end",
        );
        check(text, "return function(w) return w:sub(3, 7) == 'hello' and w:upper() == '  HELLO WORLD  ' end");
        check(
            text,
            "return function(w) return w.nonexistent_key == nil end",
        );
        check(
            b"a\0b\xff",
            "return function(w) return w.value == 'a\\0b\\255' and #w == 4 end",
        );
        check(
            b"",
            "return function(w) return w.contains('') and w.trim() == '' end",
        );
    }

    #[test]
    fn concatenating_a_table_raises() {
        let lua = lua();
        let error = eval_with_wrapper(&lua, b"x", "return function(w) return w .. {} end")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("attempt to concatenate a table value"),
            "{error}"
        );
    }

    #[test]
    fn json_maps_to_tables_exactly() {
        let lua = Lua::new();
        let json: serde_json::Value = serde_json::from_str(
            r#"{"n": 3, "big": 18446744073709551615, "f": 1.5, "list": [1, {"k": true}], "nothing": null, "s": "x"}"#,
        )
        .unwrap();
        let value = json_to_lua(&lua, &json).unwrap();
        let Value::Table(t) = value else {
            panic!("not a table")
        };
        assert_eq!(t.get::<i64>("n").unwrap(), 3);
        assert_eq!(t.get::<i64>("big").unwrap(), -1);
        assert_eq!(t.get::<f64>("f").unwrap(), 1.5);
        let list: Table = t.get("list").unwrap();
        assert_eq!(list.raw_len(), 2);
        assert!(list.get::<Table>(2).unwrap().get::<bool>("k").unwrap());
        assert!(t.get::<Value>("nothing").unwrap().is_nil());
        assert_eq!(t.get::<String>("s").unwrap(), "x");
    }
}
