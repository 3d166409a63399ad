//! `vm:boot(opts)`'s table read into [`BootOptions`]: memory, CPUs, injected files
//! and disks, relative host paths resolved against the project root.

use std::path::Path;

use mlua::Value;

use super::options;
use super::vm_args as args;
use super::vm_handle::VmApiError;
use crate::pool::parse_size_mib;
use crate::vm::options::{BootOptions, BOOT_OPTIONS};
use crate::vm::qemu::DiskFormat;
use crate::vm::Disk;

/// `vm:boot(opts)`'s table as [`BootOptions`]; relative host paths resolve against
/// `root` (the project root).
pub(super) fn boot_options(vm: &str, opts: &Value, root: &Path) -> Result<BootOptions, VmApiError> {
    let bad = |reason: String| VmApiError::BootOption {
        vm: vm.to_string(),
        reason,
    };
    let opts = options::read(opts, "argument 1 (options)", &BOOT_OPTIONS)
        .map_err(|e| bad(e.to_string()))?;
    let get = |key: &str| options::get(&opts, key).map_err(|e| bad(e.to_string()));
    let mut options = BootOptions::default();
    match get("memory")? {
        Value::Nil => {}
        Value::String(s) => {
            options.memory_mib =
                parse_size_mib(&s.to_string_lossy()).map_err(|e| bad(format!("memory: {e}")))?
        }
        other => options.memory_mib = args::count("boot", &other, "memory (MiB)")?,
    }
    match get("cpus")? {
        Value::Nil => {}
        value => {
            let cpus = args::count("boot", &value, "cpus")?;
            options.cpus = u32::try_from(cpus)
                .map_err(|_| bad(format!("cpus must be at most {}, not {cpus}", u32::MAX)))?;
        }
    }
    match get("files")? {
        Value::Nil => {}
        value => {
            let files = args::table("boot", &value, "files")?;
            for pair in files.pairs::<Value, Value>() {
                let (guest, host) = pair.map_err(|e| bad(e.to_string()))?;
                let guest_path = args::text("boot", &guest, "a files key (guest path)")?;
                let host_path = args::text("boot", &host, &format!("files['{guest_path}']"))?;
                options.add_file(guest_path, root.join(host_path));
            }
        }
    }
    match get("append")? {
        Value::Nil => {}
        value => options.append = args::text("boot", &value, "append")?,
    }
    match get("boot_timeout")? {
        Value::Nil => {}
        value => {
            options.boot_timeout = super::framework::lua_duration(&value)
                .map_err(|e| bad(format!("boot_timeout {e}")))?
        }
    }
    options.gdb = args::flag("boot", &get("gdb")?, "gdb")?;
    match get("disks")? {
        Value::Nil => {}
        value => {
            let disks = args::table("boot", &value, "disks")?;
            for i in 1..=disks.raw_len() {
                options.disks.push(disk(vm, &disks.raw_get(i)?, i, root)?);
            }
        }
    }
    options.validate().map_err(bad)?;
    Ok(options)
}

/// One `disks` entry: `{path, format = "raw"|"qcow2", readonly = false}`.
fn disk(vm: &str, value: &Value, i: usize, root: &Path) -> Result<Disk, VmApiError> {
    let what = format!("disks[{i}]");
    let bad = |reason: String| VmApiError::BootOption {
        vm: vm.to_string(),
        reason,
    };
    let disk = args::table("boot", value, &what)?;
    let path = match disk.get::<Value>("path")? {
        Value::Nil => disk.get::<Value>(1)?,
        named => named,
    };
    if path.is_nil() {
        return Err(bad(format!("{what} has no path (give it as [1] or path=)")));
    }
    let path = args::text("boot", &path, &format!("{what}.path"))?;
    let format = match disk.get::<Value>("format")? {
        Value::Nil => DiskFormat::Raw,
        value => match args::text("boot", &value, &format!("{what}.format"))?.as_str() {
            "raw" => DiskFormat::Raw,
            "qcow2" => DiskFormat::Qcow2,
            other => {
                return Err(bad(format!(
                    "{what}.format is '{other}'; use \"raw\" or \"qcow2\""
                )))
            }
        },
    };
    let readonly = args::flag(
        "boot",
        &disk.get::<Value>("readonly")?,
        &format!("{what}.readonly"),
    )?;
    Ok(Disk {
        path: root.join(path),
        format,
        readonly,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shim::InjectedFile;
    use mlua::Lua;

    fn eval(lua: &Lua, code: &str) -> Value {
        lua.load(format!("return {code}")).eval().unwrap()
    }

    #[test]
    fn boot_options_parse_with_defaults_and_project_relative_paths() {
        let lua = Lua::new();
        let root = Path::new("/project");
        assert_eq!(
            boot_options("a.lua#1", &Value::Nil, root).unwrap(),
            BootOptions::default()
        );
        let opts = eval(
            &lua,
            r#"{ memory = "2G", cpus = 2,
                files = { ["/etc/b"] = "rel/b", ["/etc/a"] = "/abs/a" },
                disks = { { "d.img", format = "qcow2", readonly = true }, { path = "/e.img" } } }"#,
        );
        let parsed = boot_options("a.lua#1", &opts, root).unwrap();
        assert_eq!((parsed.memory_mib, parsed.cpus), (2048, 2));
        assert_eq!(
            parsed.files,
            vec![
                InjectedFile {
                    guest_path: "/etc/a".into(),
                    host_path: "/abs/a".into()
                },
                InjectedFile {
                    guest_path: "/etc/b".into(),
                    host_path: "/project/rel/b".into()
                },
            ]
        );
        assert_eq!(
            parsed.disks,
            vec![
                Disk {
                    path: "/project/d.img".into(),
                    format: DiskFormat::Qcow2,
                    readonly: true
                },
                Disk {
                    path: "/e.img".into(),
                    format: DiskFormat::Raw,
                    readonly: false
                },
            ]
        );
        let memory_as_mib = eval(&lua, "{ memory = 384 }");
        assert_eq!(
            boot_options("v", &memory_as_mib, root).unwrap().memory_mib,
            384
        );
    }

    #[test]
    fn bad_boot_options_name_the_vm_and_the_option() {
        let lua = Lua::new();
        let cases = [
            (
                "{ memroy = '1G' }",
                "VM v: boot: unknown option 'memroy' (known options: memory, cpus, files, disks, networks, append, boot_timeout, gdb)",
            ),
            ("{ memory = '1T' }", "invalid size '1T'"),
            ("{ memory = '0' }", "zero is not a size"),
            ("{ cpus = 0 }", "cpus must be at least 1"),
            (
                "{ files = { ['etc/x'] = 'x' } }",
                "guest path 'etc/x' must be absolute",
            ),
            (
                "{ disks = { { 'd.img', format = 'vmdk' } } }",
                "disks[1].format is 'vmdk'",
            ),
            (
                "{ disks = { { readonly = true } } }",
                "disks[1] has no path",
            ),
            ("{ disks = 'd.img' }", "disks must be a table, not a string"),
            (
                "'big'",
                "argument 1 (options) must be a table, not a string",
            ),
        ];
        for (code, expected) in cases {
            let error = boot_options("v", &eval(&lua, code), Path::new("/p"))
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{code}: {error}");
        }
    }
}
