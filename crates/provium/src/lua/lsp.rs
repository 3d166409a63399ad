//! `provium lsp-setup`: editor support for test files. Writes the API's type
//! definitions (lua-language-server `---@meta` annotations, `provium.meta.lua`) and a
//! `.luarc.json` pointing at them, so an editor completes and checks `provium.*`, VM
//! and worker methods, option tables, the output wrappers and the globals. A test
//! holds the definitions against what the runtime registers, both ways.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use thiserror::Error;

/// The definitions, as written.
pub const META: &str = include_str!("provium.meta.lua");
/// Where, under the project directory, the definitions go.
pub const TYPES_DIR: &str = ".provium-types";
const LUARC: &str = ".luarc.json";

#[derive(Debug, Error)]
pub enum LspError {
    #[error("cannot write {}: {source}", .path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("{} is not a JSON object; fix or remove it and run provium lsp-setup again ({reason})", .path.display())]
    Luarc { path: PathBuf, reason: String },
}

/// Writes `<dir>/.provium-types/provium.lua` and adds it (with Lua 5.4 as the
/// runtime) to `<dir>/.luarc.json`, keeping whatever else that file already says.
/// Returns the files written.
pub fn setup(dir: &Path) -> Result<Vec<PathBuf>, LspError> {
    let write = |path: &Path, text: &str| {
        fs::write(path, text).map_err(|source| LspError::Write {
            path: path.to_path_buf(),
            source,
        })
    };
    if !dir.is_dir() {
        return Err(LspError::Write {
            path: dir.to_path_buf(),
            source: io::Error::new(io::ErrorKind::NotFound, "no such directory"),
        });
    }
    let types = dir.join(TYPES_DIR);
    fs::create_dir_all(&types).map_err(|source| LspError::Write {
        path: types.clone(),
        source,
    })?;
    let meta = types.join("provium.lua");
    write(&meta, META)?;

    let luarc = dir.join(LUARC);
    let mut config = match fs::read(&luarc) {
        Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => map,
            Ok(_) => {
                return Err(LspError::Luarc {
                    path: luarc,
                    reason: "it holds JSON, but not an object".to_string(),
                })
            }
            Err(e) => {
                return Err(LspError::Luarc {
                    path: luarc,
                    reason: e.to_string(),
                })
            }
        },
        Err(_) => Map::new(),
    };
    config.insert("runtime.version".into(), json!("Lua 5.4"));
    let library = config
        .entry("workspace.library")
        .or_insert_with(|| json!([]));
    match library {
        Value::Array(items) if !items.iter().any(|i| i == TYPES_DIR) => {
            items.push(json!(TYPES_DIR))
        }
        Value::Array(_) => {}
        other => *other = json!([TYPES_DIR]),
    }
    let text = serde_json::to_string_pretty(&Value::Object(config)).unwrap_or_default();
    write(&luarc, &format!("{text}\n"))?;
    Ok(vec![meta, luarc])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Names after `prefix` up to the next non-identifier character, in META.
    fn declared(prefix: &str) -> BTreeSet<String> {
        META.lines()
            .filter_map(|line| line.strip_prefix(prefix))
            .map(|rest| {
                rest.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect()
            })
            .collect()
    }

    fn set(names: impl IntoIterator<Item = impl ToString>) -> BTreeSet<String> {
        names.into_iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn the_definitions_match_what_the_runtime_registers() {
        // SAFETY: as for test files: the full standard library (`debug` included, which
        // the framework's prelude uses); nothing else shares this state.
        let lua = unsafe { mlua::Lua::unsafe_new() };
        super::super::framework::Framework::install(&lua).unwrap();
        let provium = super::super::install_provium_table(&lua).unwrap();
        let registered: BTreeSet<String> = provium
            .pairs::<String, mlua::Value>()
            .map(|pair| pair.unwrap().0)
            .collect();
        assert_eq!(declared("function provium."), registered, "provium.*");
        assert_eq!(
            declared("function VM:"),
            set(super::super::vm_api::method_names()),
            "VM methods"
        );
        let fields: BTreeSet<String> = META
            .split("---@class provium.VM")
            .nth(1)
            .unwrap()
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with("---"))
            .filter_map(|l| l.strip_prefix("---@field "))
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect();
        assert_eq!(fields, set(super::super::vm_api::FIELDS), "VM fields");
        assert_eq!(
            declared("function Network:"),
            set(super::super::network::METHODS.iter()),
            "network methods"
        );
        let mut output = declared("function Output.");
        output.insert("value".to_string());
        assert_eq!(
            output,
            set(super::super::vm_values::OUTPUT_KEYS),
            "output wrappers"
        );
        let globals = set(["test", "todo", "assert", "assert_eq", "assert_contains"]);
        assert_eq!(declared("function "), {
            let mut all = globals.clone();
            all.insert("provium".into());
            all.insert("VM".into());
            all.insert("Output".into());
            all.insert("Network".into());
            all
        });
        for global in &globals {
            let value: mlua::Value = lua.globals().get(global.as_str()).unwrap();
            assert!(value.is_function(), "{global} is not registered");
        }
    }

    #[test]
    fn setup_writes_the_types_and_keeps_an_existing_luarc() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(LUARC),
            r#"{"diagnostics.globals": ["vim"], "workspace.library": ["lib"]}"#,
        )
        .unwrap();
        let written = setup(dir.path()).unwrap();
        assert_eq!(fs::read_to_string(&written[0]).unwrap(), META);
        let config: Value =
            serde_json::from_slice(&fs::read(dir.path().join(LUARC)).unwrap()).unwrap();
        assert_eq!(config["diagnostics.globals"], json!(["vim"]));
        assert_eq!(config["workspace.library"], json!(["lib", TYPES_DIR]));
        assert_eq!(config["runtime.version"], json!("Lua 5.4"));
        // Running it again changes nothing.
        setup(dir.path()).unwrap();
        let again: Value =
            serde_json::from_slice(&fs::read(dir.path().join(LUARC)).unwrap()).unwrap();
        assert_eq!(again, config);
        fs::write(dir.path().join(LUARC), "[1]").unwrap();
        assert!(setup(dir.path())
            .unwrap_err()
            .to_string()
            .contains("not an object"));
    }
}
