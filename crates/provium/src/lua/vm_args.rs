//! Lua arguments of VM methods turned into Rust values and protocol pieces.
//!
//! Checks here concern the *shape of the Lua call*: types, how many syscall
//! arguments, whether a buffer index lies inside the argument list, whether a
//! pointer's `buf_idx` names a buffer. Memory-layout facts (does an 8-byte pointer
//! fit at `ptr_offset`, does `data` fit in `data_len`, size caps) are checked once,
//! by the agent, which answers with an error naming the offset.

use mlua::{Table, Value};
use provium_proto::{IoctlPtr, PtrPatch, SyscallBuf, MAX_SYSCALL_ARGS};
use thiserror::Error;

/// A Lua argument that does not fit what the method needs; names the method and the
/// argument.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ArgError {
    #[error("{op}: {what} must be {expected}, not {found}")]
    WrongType {
        op: &'static str,
        what: String,
        expected: &'static str,
        found: String,
    },
    #[error("{op}: {what} is {value}, {problem}")]
    OutOfRange {
        op: &'static str,
        what: String,
        value: String,
        problem: &'static str,
    },
    #[error("{op}: {given} syscall arguments given; a syscall takes at most {MAX_SYSCALL_ARGS}")]
    TooManyArgs { op: &'static str, given: usize },
    #[error("{op}: buffer index {index} is outside the argument list ({})", arg_range(*.args))]
    BufferIndex {
        op: &'static str,
        index: i64,
        args: usize,
    },
    #[error("{op}: ptrs[{ptr}] has buf_idx {buf_idx}, which names no buffer (buffers are at argument {})", list(buffers))]
    NoSuchBuffer {
        op: &'static str,
        ptr: usize,
        buf_idx: i64,
        buffers: Vec<u32>,
    },
    #[error("{op}: {what} is missing")]
    Missing { op: &'static str, what: String },
}

fn arg_range(args: usize) -> String {
    match args {
        0 => "no arguments were given".to_string(),
        1 => "1 argument was given: index 0".to_string(),
        n => format!("{n} arguments were given: indices 0 to {}", n - 1),
    }
}

fn list(items: &[u32]) -> String {
    if items.is_empty() {
        return "none".to_string();
    }
    items
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a value is named in "must be X, not Y" messages.
pub fn describe(value: &Value) -> String {
    match value {
        Value::Number(n) => format!("the non-integer number {n}"),
        Value::String(_) => "a string".to_string(),
        other => other.type_name().to_string(),
    }
}

/// A value as a message shows it: `the string "5"`, `-1`, `a table`.
pub fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => format!("the string {:?}", s.to_string_lossy()),
        Value::Integer(i) => i.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Boolean(b) => b.to_string(),
        Value::Nil => "nil".to_string(),
        other => format!("a {}", other.type_name()),
    }
}

fn wrong(op: &'static str, what: &str, expected: &'static str, found: &Value) -> ArgError {
    ArgError::WrongType {
        op,
        what: what.to_string(),
        expected,
        found: describe(found),
    }
}

/// An integer: a Lua integer, or a float with an exact integer value (as Lua's own
/// library accepts).
pub fn integer(op: &'static str, value: &Value, what: &str) -> Result<i64, ArgError> {
    match value {
        Value::Integer(i) => Ok(*i),
        // The range check keeps the cast exact: ±2^63 itself does not fit.
        Value::Number(n) if n.fract() == 0.0 && *n >= -(2f64.powi(63)) && *n < 2f64.powi(63) => {
            Ok(*n as i64)
        }
        other => Err(wrong(op, what, "an integer", other)),
    }
}

/// A non-negative integer.
pub fn count(op: &'static str, value: &Value, what: &str) -> Result<u64, ArgError> {
    let n = integer(op, value, what)?;
    u64::try_from(n).map_err(|_| ArgError::OutOfRange {
        op,
        what: what.to_string(),
        value: n.to_string(),
        problem: "but must not be negative",
    })
}

/// An integer that fits `i32` (file descriptors).
pub fn int32(op: &'static str, value: &Value, what: &str) -> Result<i32, ArgError> {
    let n = integer(op, value, what)?;
    i32::try_from(n).map_err(|_| ArgError::OutOfRange {
        op,
        what: what.to_string(),
        value: n.to_string(),
        problem: "outside the 32-bit range",
    })
}

/// A byte string (any bytes).
pub fn bytes(op: &'static str, value: &Value, what: &str) -> Result<Vec<u8>, ArgError> {
    match value {
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        other => Err(wrong(op, what, "a string", other)),
    }
}

/// A text string (commands, guest paths): must be UTF-8 to cross the protocol.
pub fn text(op: &'static str, value: &Value, what: &str) -> Result<String, ArgError> {
    match value {
        Value::String(s) => s
            .to_str()
            .map(|s| s.to_string())
            .map_err(|_| ArgError::WrongType {
                op,
                what: what.to_string(),
                expected: "UTF-8 text",
                found: "a string with invalid UTF-8".to_string(),
            }),
        other => Err(wrong(op, what, "a string", other)),
    }
}

/// A boolean, `nil` counting as `false`.
pub fn flag(op: &'static str, value: &Value, what: &str) -> Result<bool, ArgError> {
    match value {
        Value::Nil => Ok(false),
        Value::Boolean(b) => Ok(*b),
        other => Err(wrong(op, what, "a boolean", other)),
    }
}

/// A number of seconds (integer or float, not negative).
pub fn seconds(op: &'static str, value: &Value, what: &str) -> Result<f64, ArgError> {
    let secs = match value {
        Value::Integer(i) => *i as f64,
        Value::Number(n) => *n,
        other => return Err(wrong(op, what, "a number of seconds", other)),
    };
    if secs.is_finite() && secs >= 0.0 {
        Ok(secs)
    } else {
        Err(ArgError::OutOfRange {
            op,
            what: what.to_string(),
            value: secs.to_string(),
            problem: "but must be a finite number of seconds, not negative",
        })
    }
}

/// A table, or `None` for `nil`.
pub fn opt_table(op: &'static str, value: &Value, what: &str) -> Result<Option<Table>, ArgError> {
    match value {
        Value::Nil => Ok(None),
        Value::Table(t) => Ok(Some(t.clone())),
        other => Err(wrong(op, what, "a table", other)),
    }
}

pub fn table(op: &'static str, value: &Value, what: &str) -> Result<Table, ArgError> {
    opt_table(op, value, what)?.ok_or_else(|| wrong(op, what, "a table", value))
}

/// Refuses more arguments than a syscall takes.
pub fn check_arg_count(op: &'static str, given: usize) -> Result<(), ArgError> {
    if given > MAX_SYSCALL_ARGS {
        Err(ArgError::TooManyArgs { op, given })
    } else {
        Ok(())
    }
}

/// The integer arguments of a syscall. Positions in `buffer_indices` hold a
/// placeholder (any value): the agent replaces them with buffer addresses.
pub fn syscall_args(
    op: &'static str,
    values: &[Value],
    buffer_indices: &[u32],
) -> Result<Vec<u64>, ArgError> {
    check_arg_count(op, values.len())?;
    if let Some(&index) = buffer_indices
        .iter()
        .find(|&&index| index as usize >= values.len())
    {
        return Err(ArgError::BufferIndex {
            op,
            index: index.into(),
            args: values.len(),
        });
    }
    values
        .iter()
        .enumerate()
        .map(|(i, value)| {
            if buffer_indices.contains(&(i as u32)) {
                Ok(0)
            } else {
                // Two's complement: -1 is all-ones, as the kernel reads it.
                integer(op, value, &format!("syscall argument {i}")).map(|n| n as u64)
            }
        })
        .collect()
}

/// A buffer index given as a Lua value (`syscall_buf`'s `idx`, a key of the buffers
/// table): a syscall argument index.
pub fn buffer_index(
    op: &'static str,
    value: &Value,
    what: &str,
    args: usize,
) -> Result<u32, ArgError> {
    let index = integer(op, value, what)?;
    u32::try_from(index)
        .ok()
        .filter(|&i| (i as usize) < args)
        .ok_or(ArgError::BufferIndex { op, index, args })
}

/// The `{[idx] = data}` table of `syscall_bufs`/`syscall_ptr`, in argument order.
/// Each buffer comes back after the call: these methods return them all.
pub fn buffers(op: &'static str, bufs: &Table, args: usize) -> Result<Vec<SyscallBuf>, ArgError> {
    let mut out = Vec::new();
    for pair in bufs.clone().pairs::<Value, Value>() {
        let (key, data) = pair.map_err(|e| ArgError::WrongType {
            op,
            what: "the buffers table".to_string(),
            expected: "a plain table",
            found: e.to_string(),
        })?;
        let arg_idx = buffer_index(op, &key, "a buffers table key", args)?;
        out.push(SyscallBuf {
            arg_idx,
            data: bytes(op, &data, &format!("buffer {arg_idx}"))?,
            output: true,
        });
    }
    out.sort_by_key(|b| b.arg_idx);
    Ok(out)
}

/// A spec field given by name or, failing that, at its position.
fn field(op: &'static str, spec: &Table, name: &str, position: usize) -> Result<Value, ArgError> {
    let read = |v: mlua::Result<Value>| {
        v.map_err(|e| ArgError::WrongType {
            op,
            what: format!("field {name}"),
            expected: "a readable value",
            found: e.to_string(),
        })
    };
    match read(spec.get(name))? {
        Value::Nil => read(spec.get(position)),
        named => Ok(named),
    }
}

/// The entries of a list argument (`ptrs`, `specs`), each a table.
fn spec_list(op: &'static str, list: &Table, what: &str) -> Result<Vec<Table>, ArgError> {
    (1..=list.raw_len())
        .map(|i| {
            let entry: Value = list.raw_get(i).unwrap_or(Value::Nil);
            table(op, &entry, &format!("{what}[{i}]"))
        })
        .collect()
}

/// Sub-buffer length and contents: `len` defaults to the data's length.
fn sized_data(
    op: &'static str,
    spec: &Table,
    what: &str,
    len_name: &str,
    len_position: usize,
    data_position: usize,
) -> Result<(u64, Vec<u8>), ArgError> {
    let data = match field(op, spec, "data", data_position)? {
        Value::Nil => Vec::new(),
        value => bytes(op, &value, &format!("{what}.data"))?,
    };
    let len = match field(op, spec, len_name, len_position)? {
        Value::Nil if !data.is_empty() => data.len() as u64,
        Value::Nil => {
            return Err(ArgError::Missing {
                op,
                what: format!("{what}.{len_name}"),
            })
        }
        value => count(op, &value, &format!("{what}.{len_name}"))?,
    };
    Ok((len, data))
}

/// `syscall_ptr`'s pointer specs `{buf_idx, ptr_offset, data_len, data?, output?}`.
pub fn ptr_patches(
    op: &'static str,
    ptrs: &Table,
    buffers: &[SyscallBuf],
) -> Result<Vec<PtrPatch>, ArgError> {
    spec_list(op, ptrs, "ptrs")?
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let what = format!("ptrs[{}]", i + 1);
            let buf_idx_value = field(op, spec, "buf_idx", 1)?;
            if buf_idx_value.is_nil() {
                return Err(ArgError::Missing {
                    op,
                    what: format!("{what}.buf_idx"),
                });
            }
            let buf_idx = integer(op, &buf_idx_value, &format!("{what}.buf_idx"))?;
            let known: Vec<u32> = buffers.iter().map(|b| b.arg_idx).collect();
            let buf_idx = u32::try_from(buf_idx)
                .ok()
                .filter(|idx| known.contains(idx))
                .ok_or(ArgError::NoSuchBuffer {
                    op,
                    ptr: i + 1,
                    buf_idx,
                    buffers: known,
                })?;
            let ptr_offset = match field(op, spec, "ptr_offset", 2)? {
                Value::Nil => {
                    return Err(ArgError::Missing {
                        op,
                        what: format!("{what}.ptr_offset"),
                    })
                }
                value => count(op, &value, &format!("{what}.ptr_offset"))?,
            };
            let (data_len, data) = sized_data(op, spec, &what, "data_len", 3, 4)?;
            let output = flag(
                op,
                &field(op, spec, "output", 5)?,
                &format!("{what}.output"),
            )?;
            Ok(PtrPatch {
                buf_idx,
                ptr_offset,
                data_len,
                data,
                output,
            })
        })
        .collect()
}

/// `ioctl_buf`'s specs `{ptr_offset, buf_len, data?, output?}`.
pub fn ioctl_ptrs(op: &'static str, specs: &Table) -> Result<Vec<IoctlPtr>, ArgError> {
    spec_list(op, specs, "specs")?
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let what = format!("specs[{}]", i + 1);
            let ptr_offset = match field(op, spec, "ptr_offset", 1)? {
                Value::Nil => {
                    return Err(ArgError::Missing {
                        op,
                        what: format!("{what}.ptr_offset"),
                    })
                }
                value => count(op, &value, &format!("{what}.ptr_offset"))?,
            };
            let (buf_len, data) = sized_data(op, spec, &what, "buf_len", 2, 3)?;
            let output = flag(
                op,
                &field(op, spec, "output", 4)?,
                &format!("{what}.output"),
            )?;
            Ok(IoctlPtr {
                ptr_offset,
                buf_len,
                data,
                output,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlua::{Lua, MultiValue};

    fn values(lua: &Lua, code: &str) -> Vec<Value> {
        lua.load(code).eval::<MultiValue>().unwrap().into_vec()
    }

    fn table_of(lua: &Lua, code: &str) -> Table {
        lua.load(code).eval().unwrap()
    }

    #[test]
    fn integers_are_exact_and_floats_must_be_whole() {
        let lua = Lua::new();
        let v = values(
            &lua,
            "return -1, 9007199254740993, 3.0, 1.5, 'x', math.mininteger",
        );
        assert_eq!(integer("syscall", &v[0], "a"), Ok(-1));
        assert_eq!(integer("syscall", &v[1], "a"), Ok(9007199254740993));
        assert_eq!(integer("syscall", &v[2], "a"), Ok(3));
        assert_eq!(
            integer("syscall", &v[3], "a").unwrap_err().to_string(),
            "syscall: a must be an integer, not the non-integer number 1.5"
        );
        assert!(integer("syscall", &v[4], "a").is_err());
        assert_eq!(integer("syscall", &v[5], "a"), Ok(i64::MIN));
        assert!(count("x", &v[0], "n")
            .unwrap_err()
            .to_string()
            .contains("negative"));
    }

    #[test]
    fn syscall_args_keep_bit_patterns_and_check_counts_and_indices() {
        let lua = Lua::new();
        let v = values(&lua, "return -100, 0, 0x241, 420");
        assert_eq!(
            syscall_args("syscall_buf", &v, &[1]).unwrap(),
            vec![(-100i64) as u64, 0, 0x241, 420]
        );
        let seven = values(&lua, "return 1, 2, 3, 4, 5, 6, 7");
        assert_eq!(
            syscall_args("syscall", &seven, &[])
                .unwrap_err()
                .to_string(),
            "syscall: 7 syscall arguments given; a syscall takes at most 6"
        );
        let three = values(&lua, "return 1, 0, 1");
        let error = syscall_args("syscall_buf", &three, &[3])
            .unwrap_err()
            .to_string();
        assert!(error.contains("index 3"), "{error}");
        assert!(error.contains("indices 0 to 2"), "{error}");
        let bad = values(&lua, "return 1, 'x'");
        assert!(syscall_args("syscall", &bad, &[])
            .unwrap_err()
            .to_string()
            .contains("argument 1"));
        // The placeholder at a buffer index may be anything.
        assert!(syscall_args("syscall_buf", &bad, &[1]).is_ok());
    }

    #[test]
    fn buffers_come_back_in_argument_order() {
        let lua = Lua::new();
        let t = table_of(&lua, "return { [2] = 'b', [0] = 'a' }");
        let bufs = buffers("syscall_bufs", &t, 3).unwrap();
        assert_eq!(
            bufs.iter().map(|b| b.arg_idx).collect::<Vec<_>>(),
            vec![0, 2]
        );
        assert_eq!(bufs[1].data, b"b");
        let error = buffers("syscall_bufs", &t, 2).unwrap_err().to_string();
        assert!(error.contains("index 2"), "{error}");
        let negative = table_of(&lua, "return { [-1] = 'a' }");
        assert!(buffers("syscall_bufs", &negative, 3)
            .unwrap_err()
            .to_string()
            .contains("index -1"));
        let not_bytes = table_of(&lua, "return { [0] = 5 }");
        assert!(buffers("syscall_bufs", &not_bytes, 3).is_err());
    }

    #[test]
    fn ptr_specs_by_name_or_position() {
        let lua = Lua::new();
        let bufs = vec![SyscallBuf {
            arg_idx: 1,
            data: vec![0; 32],
            output: true,
        }];
        let t = table_of(
            &lua,
            "return { { buf_idx = 1, ptr_offset = 0, data_len = 3, data = 'abc' },
                      { 1, 16, 4, 'defg', true },
                      { buf_idx = 1, ptr_offset = 8, data = 'xy' } }",
        );
        let ptrs = ptr_patches("syscall_ptr", &t, &bufs).unwrap();
        assert_eq!(ptrs[0].data_len, 3);
        assert_eq!(ptrs[0].data, b"abc");
        assert!(!ptrs[0].output);
        assert_eq!(
            (
                ptrs[1].buf_idx,
                ptrs[1].ptr_offset,
                ptrs[1].data_len,
                ptrs[1].output
            ),
            (1, 16, 4, true)
        );
        assert_eq!(
            ptrs[2].data_len, 2,
            "data_len defaults to the data's length"
        );

        let wrong_buf = table_of(
            &lua,
            "return { { buf_idx = 2, ptr_offset = 0, data_len = 1 } }",
        );
        let error = ptr_patches("syscall_ptr", &wrong_buf, &bufs)
            .unwrap_err()
            .to_string();
        assert!(error.contains("buf_idx 2"), "{error}");
        assert!(error.contains("argument 1"), "{error}");
        let no_len = table_of(&lua, "return { { buf_idx = 1, ptr_offset = 0 } }");
        assert!(ptr_patches("syscall_ptr", &no_len, &bufs)
            .unwrap_err()
            .to_string()
            .contains("ptrs[1].data_len is missing"));
        let not_table = table_of(&lua, "return { 5 }");
        assert!(ptr_patches("syscall_ptr", &not_table, &bufs).is_err());
    }

    #[test]
    fn ioctl_specs_by_name_or_position() {
        let lua = Lua::new();
        let t = table_of(
            &lua,
            "return { { ptr_offset = 8, buf_len = 160, output = true }, { 16, 2, 'hi' } }",
        );
        let specs = ioctl_ptrs("ioctl_buf", &t).unwrap();
        assert_eq!(
            (specs[0].ptr_offset, specs[0].buf_len, specs[0].output),
            (8, 160, true)
        );
        assert_eq!((specs[1].ptr_offset, specs[1].buf_len), (16, 2));
        assert_eq!(specs[1].data, b"hi");
        let bad = table_of(&lua, "return { { ptr_offset = 'x', buf_len = 1 } }");
        assert!(ioctl_ptrs("ioctl_buf", &bad).is_err());
    }

    #[test]
    fn seconds_and_flags() {
        let lua = Lua::new();
        let v = values(&lua, "return 0.5, -1, true, 'yes'");
        assert_eq!(seconds("job_wait", &v[0], "timeout"), Ok(0.5));
        assert!(seconds("job_wait", &v[1], "timeout").is_err());
        assert_eq!(flag("spawn", &v[2], "thread"), Ok(true));
        assert_eq!(flag("spawn", &Value::Nil, "thread"), Ok(false));
        assert!(flag("spawn", &v[3], "thread").is_err());
    }
}
