//! `provium.network(opts?)`: private Ethernet segments between a file's VMs, served by
//! an in-process switch (`net::Switch`) — no root, nothing from the host kernel — and
//! the methods that cut, slow and watch their traffic. Networks belong to their file:
//! they end with it, after its VMs.
//!
//! A network's handle converts only: Lua values in, one call on the switch, values
//! out. Which VM joins which network is decided at `vm:boot{networks = …}`
//! ([`nics_for_boot`]); the agent configures the guest's side (docs/networks.md).

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;

use mlua::{
    AnyUserData, Lua, MultiValue, Table, UserDataFields, UserDataMethods, UserDataRef, Value,
};

use super::vm_args::describe;
use super::vm_handle::LuaVm;
use super::{plain_errors, raise, FileContext};
use crate::net::options::{check_options, IMPAIR_OPTIONS, PARTITION_OPTIONS};
use crate::net::{self, DurationValue, Impairment, NetError, Port, Subnet, Switch, SwitchConfig};
use crate::vm::Nic;

/// The options `provium.network{…}` accepts.
const NETWORK_OPTIONS: &[&str] = &["subnet", "mtu"];
/// The MTU of a network that does not say.
const DEFAULT_MTU: u32 = 1500;

/// One network of a file: its switch until the file ends.
pub struct Network {
    /// `<file>#net<n>`, in every error.
    name: String,
    mtu: u32,
    subnet: Subnet,
    /// The run directory's subdirectory holding the port sockets.
    dir: PathBuf,
    /// `None` once the file ended.
    switch: RefCell<Option<Switch>>,
}

impl Network {
    pub fn name(&self) -> &str {
        &self.name
    }

    fn with_switch<T>(
        &self,
        call: impl FnOnce(&Switch) -> Result<T, NetError>,
    ) -> Result<T, String> {
        match &*self.switch.borrow() {
            Some(switch) => call(switch).map_err(|e| e.to_string()),
            None => Err(format!("network {}: it ended with its file", self.name)),
        }
    }

    /// Stops the switch and removes its sockets (the file ended; its VMs are gone).
    pub fn end(&self) -> Option<String> {
        let switch = self.switch.borrow_mut().take()?;
        let result = switch.shutdown().err().map(|e| e.to_string());
        let _ = std::fs::remove_dir_all(&self.dir);
        result
    }
}

/// The Lua userdata of a network.
#[derive(Clone)]
pub struct LuaNetwork(pub Rc<Network>);

/// The methods of a network handle.
pub const METHODS: &[&str] = &["partition", "heal", "impair", "capture", "stats"];

/// Installs `provium.network` and the network handle type.
pub fn install(lua: &Lua, provium: &Table) -> mlua::Result<()> {
    let methods = lua.create_table()?;
    for &name in METHODS {
        let function = lua.create_function(move |lua, call: MultiValue| {
            let mut values = call.into_vec();
            let this = if values.is_empty() {
                Value::Nil
            } else {
                values.remove(0)
            };
            let net = self_network(name, &this)?;
            let net = &net.0;
            match name {
                "partition" => partition(lua, net, &values),
                "heal" => net
                    .with_switch(Switch::heal)
                    .map_err(|e| raise(lua, e, false)),
                "impair" => impair(lua, net, &values),
                "capture" => capture(lua, net, &values),
                _ => {
                    return stats(lua, net, &values)
                        .map(|t| [Value::Table(t)].into_iter().collect())
                }
            }
            .map(|()| MultiValue::new())
        })?;
        methods.raw_set(name, plain_errors(lua, function)?)?;
    }
    let index = lua.create_function(move |lua, (ud, key): (AnyUserData, Value)| {
        let method: Value = methods.raw_get(key.clone())?;
        if !method.is_nil() {
            return Ok(method);
        }
        let net = ud.borrow::<LuaNetwork>()?;
        let Value::String(key) = key else {
            return Ok(Value::Nil);
        };
        Ok(match &*key.to_str()? {
            "name" => Value::String(lua.create_string(&net.0.name)?),
            "subnet" => Value::String(lua.create_string(net.0.subnet.to_string())?),
            "mtu" => Value::Integer(i64::from(net.0.mtu)),
            _ => Value::Nil,
        })
    })?;
    lua.register_userdata_type::<LuaNetwork>(move |reg| {
        reg.add_meta_field("__index", index);
        reg.add_meta_field("__name", "provium network");
        reg.add_meta_method("__tostring", |_, this, ()| {
            Ok(format!("network {}", this.0.name))
        });
    })?;
    provium.set("network", plain_errors(lua, lua.create_function(network)?)?)?;
    Ok(())
}

fn self_network(op: &str, this: &Value) -> mlua::Result<UserDataRef<LuaNetwork>> {
    if let Value::UserData(ud) = this {
        if let Ok(net) = ud.borrow::<LuaNetwork>() {
            return Ok(net);
        }
    }
    Err(mlua::Error::RuntimeError(format!(
        "{op}: call it as a method, net:{op}(...) with a colon (got a {} value as the network)",
        this.type_name()
    )))
}

/// `provium.network(opts?)`.
fn network(lua: &Lua, opts: Value) -> mlua::Result<AnyUserData> {
    let ctx = FileContext::of(lua)?;
    let name = format!("{}#net{}", ctx.name(), ctx.networks().len() + 1);
    let bad = |reason: String| raise(lua, format!("network {name}: {reason}"), false);
    let table = match &opts {
        Value::Nil => None,
        Value::Table(t) => Some(t.clone()),
        other => {
            return Err(bad(format!(
                "the options must be a table, not {}",
                describe(other)
            )))
        }
    };
    let mut subnet = None;
    let mut mtu = DEFAULT_MTU;
    if let Some(table) = &table {
        let keys = option_keys(table).map_err(&bad)?;
        check_options(&name, keys.iter().map(String::as_str), NETWORK_OPTIONS)
            .map_err(|e| raise(lua, e.to_string(), false))?;
        match table.raw_get::<Value>("subnet")? {
            Value::Nil => {}
            Value::String(s) => {
                subnet = Some(
                    Subnet::parse(&s.to_string_lossy()).map_err(|e| bad(format!("subnet: {e}")))?,
                )
            }
            other => {
                return Err(bad(format!(
                    "subnet must be a string such as \"192.168.7.0/24\", not {}",
                    describe(&other)
                )))
            }
        }
        match table.raw_get::<Value>("mtu")? {
            Value::Nil => {}
            Value::Integer(n) if (68..=65535).contains(&n) => mtu = n as u32,
            other => {
                return Err(bad(format!(
                    "mtu must be a whole number from 68 to 65535, not {}",
                    describe(&other)
                )))
            }
        }
    }
    let run = ctx.run();
    let subnet = match subnet {
        Some(subnet) => subnet,
        None => run
            .subnets
            .allocate(&name)
            .map_err(|e| raise(lua, e.to_string(), true))?,
    };
    let dir = run.run_dir.path().join(format!(
        "net{}",
        run.next_network
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| {
        raise(
            lua,
            format!("network {name}: cannot create {}: {e}", dir.display()),
            true,
        )
    })?;
    let switch = Switch::new(SwitchConfig {
        network: name.clone(),
        dir: dir.clone(),
        subnet,
        seed: None,
    })
    .map_err(|e| raise(lua, e.to_string(), true))?;
    let network = Rc::new(Network {
        name,
        mtu,
        subnet,
        dir,
        switch: RefCell::new(Some(switch)),
    });
    ctx.add_network(Rc::clone(&network));
    lua.create_any_userdata(LuaNetwork(network))
}

fn option_keys(table: &Table) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    for pair in table.clone().pairs::<Value, Value>() {
        let (key, _) = pair.map_err(|e| e.to_string())?;
        match key {
            Value::String(k) => keys.push(k.to_string_lossy()),
            other => return Err(format!("option keys are names, not {}", describe(&other))),
        }
    }
    Ok(keys)
}

/// A VM argument's name (`vm`, or the VM of a worker).
fn vm_name(lua: &Lua, net: &Network, value: &Value, what: &str) -> mlua::Result<String> {
    if let Value::UserData(ud) = value {
        if let Ok(vm) = ud.borrow::<LuaVm>() {
            return Ok(vm.handle.name().to_string());
        }
    }
    Err(raise(
        lua,
        format!(
            "network {}: {what} must be a VM, not {}",
            net.name,
            describe(value)
        ),
        false,
    ))
}

/// `net:partition(a, b)` or `net:partition{from = a, to = b}`.
fn partition(lua: &Lua, net: &Network, a: &[Value]) -> mlua::Result<()> {
    let nil = Value::Nil;
    let first = a.first().unwrap_or(&nil);
    if let Value::Table(table) = first {
        let keys = option_keys(table)
            .map_err(|e| raise(lua, format!("network {}: partition: {e}", net.name), false))?;
        check_options(
            &net.name,
            keys.iter().map(String::as_str),
            PARTITION_OPTIONS,
        )
        .map_err(|e| raise(lua, e.to_string(), false))?;
        let from = vm_name(lua, net, &table.raw_get("from")?, "partition's from")?;
        let to = vm_name(lua, net, &table.raw_get("to")?, "partition's to")?;
        return net
            .with_switch(|s| s.partition_one_way(&from, &to))
            .map_err(|e| raise(lua, e, false));
    }
    let x = vm_name(lua, net, first, "partition's first VM")?;
    let y = vm_name(lua, net, a.get(1).unwrap_or(&nil), "partition's second VM")?;
    net.with_switch(|s| s.partition(&x, &y))
        .map_err(|e| raise(lua, e, false))
}

fn duration_of(
    lua: &Lua,
    net: &Network,
    option: &str,
    value: &Value,
) -> mlua::Result<Option<std::time::Duration>> {
    let parsed = match value {
        Value::Nil => return Ok(None),
        Value::String(s) => {
            net::parse_duration(&net.name, option, DurationValue::Text(&s.to_string_lossy()))
        }
        Value::Integer(n) => {
            net::parse_duration(&net.name, option, DurationValue::Seconds(*n as f64))
        }
        Value::Number(n) => net::parse_duration(&net.name, option, DurationValue::Seconds(*n)),
        other => {
            return Err(raise(
                lua,
                format!(
                    "network {}: {option} must be a duration (\"50ms\", or seconds), not {}",
                    net.name,
                    describe(other)
                ),
                false,
            ))
        }
    };
    parsed
        .map(Some)
        .map_err(|e| raise(lua, e.to_string(), false))
}

/// `net:impair{latency, jitter, loss, seed, from, to}`; `{}` clears every impairment.
fn impair(lua: &Lua, net: &Network, a: &[Value]) -> mlua::Result<()> {
    let table = match a.first() {
        Some(Value::Table(t)) => t.clone(),
        other => {
            return Err(raise(
                lua,
                format!(
                    "network {}: impair takes a table ({{latency = \"50ms\", loss = 0.1, ...}}, or {{}} to clear), not {}",
                    net.name,
                    describe(other.unwrap_or(&Value::Nil))
                ),
                false,
            ))
        }
    };
    let keys = option_keys(&table)
        .map_err(|e| raise(lua, format!("network {}: impair: {e}", net.name), false))?;
    check_options(&net.name, keys.iter().map(String::as_str), IMPAIR_OPTIONS)
        .map_err(|e| raise(lua, e.to_string(), false))?;
    let latency = duration_of(lua, net, "latency", &table.raw_get("latency")?)?;
    let jitter = duration_of(lua, net, "jitter", &table.raw_get("jitter")?)?;
    let loss = match table.raw_get::<Value>("loss")? {
        Value::Nil => None,
        Value::Integer(n) => Some(n as f64),
        Value::Number(n) => Some(n),
        other => {
            return Err(raise(
                lua,
                format!(
                    "network {}: loss must be a number in [0, 1], not {}",
                    net.name,
                    describe(&other)
                ),
                false,
            ))
        }
    };
    if let Some(loss) = loss {
        net::check_loss(&net.name, loss).map_err(|e| raise(lua, e.to_string(), false))?;
    }
    let seed = match table.raw_get::<Value>("seed")? {
        Value::Nil => None,
        Value::Integer(n) => Some(n as u64),
        other => {
            return Err(raise(
                lua,
                format!(
                    "network {}: seed must be a whole number, not {}",
                    net.name,
                    describe(&other)
                ),
                false,
            ))
        }
    };
    let from = match table.raw_get::<Value>("from")? {
        Value::Nil => None,
        value => Some(vm_name(lua, net, &value, "impair's from")?),
    };
    let to = match table.raw_get::<Value>("to")? {
        Value::Nil => None,
        value => Some(vm_name(lua, net, &value, "impair's to")?),
    };
    let impairment = Impairment {
        latency: latency.unwrap_or_default(),
        jitter: jitter.unwrap_or_default(),
        loss: loss.unwrap_or(0.0),
    };
    let result = net.with_switch(|s| {
        if let Some(seed) = seed {
            s.reseed(seed)?;
        }
        match (&from, &to) {
            (Some(from), Some(to)) => s.impair_direction(from, to, impairment),
            (None, None) if impairment.is_none() => s.clear_impairments(),
            (None, None) => s.impair(impairment),
            _ => Err(NetError::UnknownOption {
                network: s.network().to_string(),
                option: "from/to".to_string(),
                known: "both from and to, or neither".to_string(),
            }),
        }
    });
    result.map_err(|e| raise(lua, e, false))
}

/// `net:capture(path)`: every frame from now on, pcap; `net:capture(nil)` stops.
fn capture(lua: &Lua, net: &Network, a: &[Value]) -> mlua::Result<()> {
    let ctx = FileContext::of(lua)?;
    match a.first() {
        None | Some(Value::Nil) | Some(Value::Boolean(false)) => net
            .with_switch(|s| s.stop_capture().map(|_| ()))
            .map_err(|e| raise(lua, e, false)),
        Some(Value::String(path)) => {
            let path = ctx.run().project_root.join(path.to_string_lossy());
            net.with_switch(|s| s.capture(&path))
                .map_err(|e| raise(lua, e, false))
        }
        Some(other) => Err(raise(
            lua,
            format!(
                "network {}: capture takes a file path (or nil to stop), not {}",
                net.name,
                describe(other)
            ),
            false,
        )),
    }
}

/// `net:stats(vm)`: that VM's port counters, from the guest's side.
fn stats(lua: &Lua, net: &Network, a: &[Value]) -> mlua::Result<Table> {
    let vm = vm_name(
        lua,
        net,
        a.first().unwrap_or(&Value::Nil),
        "stats' argument",
    )?;
    let s = net
        .with_switch(|switch| switch.stats(&vm))
        .map_err(|e| raise(lua, e, false))?;
    let table = lua.create_table()?;
    for (key, value) in [
        ("tx_frames", s.tx_frames),
        ("tx_bytes", s.tx_bytes),
        ("rx_frames", s.rx_frames),
        ("rx_bytes", s.rx_bytes),
        ("dropped", s.dropped()),
        ("dropped_partition", s.dropped_partition),
        ("dropped_loss", s.dropped_loss),
        ("dropped_overflow", s.dropped_overflow),
        ("dropped_undeliverable", s.dropped_undeliverable),
        ("dropped_invalid", s.dropped_invalid),
    ] {
        table.set(key, value)?;
    }
    Ok(table)
}

/// The networks a boot joined, each with the VM's port on it.
pub type Joined = Vec<(Rc<Network>, Port)>;

/// `vm:boot{networks = {net, …}}`: the networks, checked (this file's, each once) and
/// joined, as the NICs the VM boots with (`eth0` first).
pub fn nics_for_boot(lua: &Lua, vm: &str, value: &Value) -> mlua::Result<(Vec<Nic>, Joined)> {
    let ctx = FileContext::of(lua)?;
    let bad = |reason: String| raise(lua, format!("VM {vm}: boot: networks: {reason}"), false);
    let list = match value {
        Value::Nil => return Ok((Vec::new(), Vec::new())),
        Value::Table(t) => t.clone(),
        other => {
            return Err(bad(format!(
                "must be a list of networks, not {}",
                describe(other)
            )))
        }
    };
    let mut nics = Vec::new();
    let mut joined: Joined = Vec::new();
    for i in 1..=list.raw_len() {
        let entry: Value = list.raw_get(i)?;
        let network = match &entry {
            Value::UserData(ud) => ud.borrow::<LuaNetwork>().ok().map(|n| Rc::clone(&n.0)),
            _ => None,
        };
        let Some(network) = network else {
            return Err(bad(format!(
                "[{i}] must be a network (provium.network()), not {}",
                describe(&entry)
            )));
        };
        if !ctx.owns_network(&network) {
            return Err(bad(format!(
                "network {} belongs to another file; a network is private to the file that made it",
                network.name
            )));
        }
        if joined.iter().any(|(n, _)| Rc::ptr_eq(n, &network)) {
            return Err(bad(format!("network {} is listed twice", network.name)));
        }
        // A VM booted again keeps its port (and so its address and MAC).
        let port = network
            .with_switch(|s| s.port(vm).or_else(|_| s.add_port(vm)))
            .map_err(|e| raise(lua, e, false))?;
        let id = format!("net{}", i - 1);
        nics.push(Nic {
            netdev: port.netdev_arg(&id),
            netdev_id: id,
            mac: port.mac.to_string(),
            address: port.address,
            prefix: port.prefix_len,
            mtu: network.mtu,
        });
        joined.push((network, port));
    }
    Ok((nics, joined))
}
