//! `provium.pack` / `provium.unpack`: little-endian binary structs.
//!
//! Lua 5.4 integers are signed 64-bit, so every specifier round-trips exactly: `u64`
//! accepts any integer and writes its bit pattern, and reads back values above
//! 2^63-1 as their two's-complement (negative) integer.

use mlua::{Lua, MultiValue, Table, Value};
use thiserror::Error;

/// One field of a format string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
}

impl Field {
    fn parse(word: &str) -> Option<Field> {
        Some(match word {
            "u8" => Field::U8,
            "i8" => Field::I8,
            "u16" => Field::U16,
            "i16" => Field::I16,
            "u32" => Field::U32,
            "i32" => Field::I32,
            "u64" => Field::U64,
            "i64" => Field::I64,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Field::U8 => "u8",
            Field::I8 => "i8",
            Field::U16 => "u16",
            Field::I16 => "i16",
            Field::U32 => "u32",
            Field::I32 => "i32",
            Field::U64 => "u64",
            Field::I64 => "i64",
        }
    }

    pub fn size(self) -> usize {
        match self {
            Field::U8 | Field::I8 => 1,
            Field::U16 | Field::I16 => 2,
            Field::U32 | Field::I32 => 4,
            Field::U64 | Field::I64 => 8,
        }
    }

    /// The accepted integer range; `u64` takes every Lua integer (its bit pattern).
    fn range(self) -> (i64, i64) {
        match self {
            Field::U8 => (0, u8::MAX.into()),
            Field::I8 => (i8::MIN.into(), i8::MAX.into()),
            Field::U16 => (0, u16::MAX.into()),
            Field::I16 => (i16::MIN.into(), i16::MAX.into()),
            Field::U32 => (0, u32::MAX.into()),
            Field::I32 => (i32::MIN.into(), i32::MAX.into()),
            Field::U64 | Field::I64 => (i64::MIN, i64::MAX),
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PackError {
    #[error("empty format string")]
    EmptyFormat,
    #[error("unknown specifier '{word}' in format \"{format}\" (expected u8 i8 u16 i16 u32 i32 u64 i64)")]
    UnknownField { format: String, word: String },
    #[error("format \"{format}\" has {fields} fields but {values} values were given")]
    ValueCount {
        format: String,
        fields: usize,
        values: usize,
    },
    #[error("value {index} ({value}) is out of range for {field}")]
    OutOfRange {
        index: usize,
        value: i64,
        field: &'static str,
    },
    #[error("value {index} for {field} is not an integer: {value}")]
    NotAnInteger {
        index: usize,
        field: &'static str,
        value: String,
    },
    #[error("format \"{format}\" needs {needed} bytes, data has {got}")]
    ShortData {
        format: String,
        needed: usize,
        got: usize,
    },
    #[error("data must be a string, got {type_name}")]
    NotAString { type_name: &'static str },
}

/// Parses a space-separated format such as `"u32 u16 u16 u64"`.
pub fn parse_format(format: &str) -> Result<Vec<Field>, PackError> {
    let fields = format
        .split_whitespace()
        .map(|word| {
            Field::parse(word).ok_or_else(|| PackError::UnknownField {
                format: format.to_string(),
                word: word.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if fields.is_empty() {
        return Err(PackError::EmptyFormat);
    }
    Ok(fields)
}

/// Packs `values` little-endian; each must fit its field.
pub fn pack(format: &str, values: &[i64]) -> Result<Vec<u8>, PackError> {
    let fields = parse_format(format)?;
    if fields.len() != values.len() {
        return Err(PackError::ValueCount {
            format: format.to_string(),
            fields: fields.len(),
            values: values.len(),
        });
    }
    let mut out = Vec::with_capacity(fields.iter().map(|f| f.size()).sum());
    for (index, (&field, &value)) in fields.iter().zip(values).enumerate() {
        let (min, max) = field.range();
        if value < min || value > max {
            return Err(PackError::OutOfRange {
                index: index + 1,
                value,
                field: field.name(),
            });
        }
        // Truncating the two's-complement bytes is exactly the field's encoding once
        // the range check passed (and is the bit pattern for u64).
        out.extend_from_slice(&value.to_le_bytes()[..field.size()]);
    }
    Ok(out)
}

/// Reads one value per field from the start of `data`; trailing bytes are ignored so
/// a header can be read out of a larger buffer.
pub fn unpack(format: &str, data: &[u8]) -> Result<Vec<i64>, PackError> {
    let fields = parse_format(format)?;
    let needed: usize = fields.iter().map(|f| f.size()).sum();
    if data.len() < needed {
        return Err(PackError::ShortData {
            format: format.to_string(),
            needed,
            got: data.len(),
        });
    }
    let mut offset = 0;
    let values = fields
        .iter()
        .map(|&field| {
            let bytes = &data[offset..offset + field.size()];
            offset += field.size();
            let mut buf = [0u8; 8];
            buf[..bytes.len()].copy_from_slice(bytes);
            let raw = u64::from_le_bytes(buf);
            match field {
                Field::U8 | Field::U16 | Field::U32 => raw as i64,
                Field::I8 => i64::from(raw as u8 as i8),
                Field::I16 => i64::from(raw as u16 as i16),
                Field::I32 => i64::from(raw as u32 as i32),
                // Bit-exact: above 2^63-1 this is the negative two's-complement value.
                Field::U64 | Field::I64 => raw as i64,
            }
        })
        .collect();
    Ok(values)
}

fn lua_integer(index: usize, field: Option<Field>, value: &Value) -> Result<i64, PackError> {
    let not_integer = |shown: String| PackError::NotAnInteger {
        index,
        field: field.map_or("field", Field::name),
        value: shown,
    };
    match value {
        Value::Integer(i) => Ok(*i),
        // Lua's own string.pack accepts floats with an exact integer value.
        Value::Number(n) if n.fract() == 0.0 && *n >= -(2f64.powi(63)) && *n < 2f64.powi(63) => {
            Ok(*n as i64)
        }
        Value::Number(n) => Err(not_integer(n.to_string())),
        Value::String(s) => Err(not_integer(format!("string \"{}\"", s.to_string_lossy()))),
        other => Err(not_integer(other.type_name().to_string())),
    }
}

/// Registers `pack` and `unpack` into the `provium` table.
pub fn install(lua: &Lua, provium: &Table) -> mlua::Result<()> {
    let pack_fn = lua.create_function(|lua, mut args: MultiValue| {
        let format = format_arg("provium.pack", args.pop_front().unwrap_or(Value::Nil))?;
        let values = args;
        let fields = parse_format(&format).map_err(|e| lua_error("provium.pack", e))?;
        let ints = values
            .iter()
            .enumerate()
            .map(|(i, v)| lua_integer(i + 1, fields.get(i).copied(), v))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| lua_error("provium.pack", e))?;
        let bytes = pack(&format, &ints).map_err(|e| lua_error("provium.pack", e))?;
        lua.create_string(bytes)
    })?;
    let unpack_fn = lua.create_function(|_, (format, data): (Value, Value)| {
        let format = format_arg("provium.unpack", format)?;
        let Value::String(data) = data else {
            return Err(lua_error(
                "provium.unpack",
                PackError::NotAString {
                    type_name: data.type_name(),
                },
            ));
        };
        let values =
            unpack(&format, &data.as_bytes()).map_err(|e| lua_error("provium.unpack", e))?;
        Ok(MultiValue::from_iter(
            values.into_iter().map(Value::Integer),
        ))
    })?;
    provium.set("pack", super::plain_errors(lua, pack_fn)?)?;
    provium.set("unpack", super::plain_errors(lua, unpack_fn)?)?;
    Ok(())
}

/// The format argument: a string, or an error naming the function and the type.
fn format_arg(function: &'static str, value: Value) -> mlua::Result<String> {
    super::vm_args::text(function, &value, "argument 1 (format)")
        .map_err(|e| mlua::Error::RuntimeError(e.to_string()))
}

fn lua_error(function: &str, error: PackError) -> mlua::Error {
    mlua::Error::RuntimeError(format!("{function}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_little_endian() {
        assert_eq!(
            pack("u8 u16 u32", &[1, 0x0203, 0x0405_0607]).unwrap(),
            [1, 3, 2, 7, 6, 5, 4]
        );
        assert_eq!(
            pack("i16 i32", &[-2, -1]).unwrap(),
            [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
    }

    #[test]
    fn sixty_four_bits_are_exact() {
        assert_eq!(pack("u64", &[-1]).unwrap(), [0xff; 8]);
        assert_eq!(unpack("u64", &[0xff; 8]).unwrap(), [-1]);
        let min = pack("i64", &[i64::MIN]).unwrap();
        assert_eq!(unpack("i64", &min).unwrap(), [i64::MIN]);
        let big = (1i64 << 53) + 1;
        assert_eq!(unpack("u64", &pack("u64", &[big]).unwrap()).unwrap(), [big]);
    }

    #[test]
    fn range_errors_name_the_value_and_field() {
        assert_eq!(
            pack("u8", &[256]).unwrap_err(),
            PackError::OutOfRange {
                index: 1,
                value: 256,
                field: "u8"
            }
        );
        assert!(pack("u8", &[-1]).is_err());
        assert!(pack("i16", &[32768]).is_err());
        assert!(pack("i16", &[-32768]).is_ok());
        assert!(pack("u32", &[1 << 32]).is_err());
        assert!(pack("i32", &[i64::from(i32::MIN) - 1]).is_err());
    }

    #[test]
    fn format_and_count_errors() {
        assert!(matches!(
            pack("u128", &[1]),
            Err(PackError::UnknownField { .. })
        ));
        assert_eq!(pack("", &[]).unwrap_err(), PackError::EmptyFormat);
        assert!(matches!(
            pack("u8 u8", &[1]),
            Err(PackError::ValueCount { .. })
        ));
    }

    #[test]
    fn short_data_raises_and_trailing_data_is_ignored() {
        assert_eq!(
            unpack("u32 u16", &[0; 5]).unwrap_err(),
            PackError::ShortData {
                format: "u32 u16".into(),
                needed: 6,
                got: 5
            }
        );
        assert_eq!(unpack("u16", &[1, 0, 9, 9]).unwrap(), [1]);
        assert_eq!(unpack("i8 u8", &[0xff, 0xff]).unwrap(), [-1, 255]);
    }
}
