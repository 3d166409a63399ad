//! A booted VM's view of its networks: `vm:ip(net)`, `vm:mac(net)`, `vm:ifname(net)`,
//! and the check after a boot that the guest made an interface of every NIC it was
//! given (docs/networks.md).

use mlua::{Lua, MultiValue, Value};

use super::raise;
use super::vm_args::{self as args};
use super::vm_handle::{arg, returns, LuaVm};
use crate::vm::fleet::{NicInfo, VmHandle};

/// `vm:ip(net)`, `vm:mac(net)`, `vm:ifname(net)`: the VM's NIC on that network.
pub(super) fn nic_field(
    lua: &Lua,
    this: &LuaVm,
    a: &[Value],
    field: &str,
) -> mlua::Result<MultiValue> {
    let network = match arg(a, 0) {
        Value::UserData(ud) => ud
            .borrow::<super::network::LuaNetwork>()
            .ok()
            .map(|n| n.0.name().to_string()),
        _ => None,
    };
    let Some(network) = network else {
        return Err(raise(
            lua,
            format!(
                "{this}: {field}: argument 1 must be a network (provium.network()), not {}",
                args::describe(arg(a, 0))
            ),
            false,
        ));
    };
    let nic = this
        .handle
        .nics()
        .into_iter()
        .find(|n| n.network == network)
        .ok_or_else(|| {
            raise(
                lua,
                format!(
                    "{this}: {field}: the VM is not on network {network} (boot it with networks = {{ net }})"
                ),
                false,
            )
        })?;
    let text = match field {
        "ip" => nic.address.to_string(),
        "mac" => nic.mac,
        _ => nic.ifname,
    };
    Ok(returns([Value::String(lua.create_string(text)?)]))
}

/// After a boot on networks: which interface the guest made of each NIC, checked
/// against what the agent was asked to configure (a kernel without virtio_net, or a
/// NIC whose address did not take, is an error naming the network).
pub(super) fn guest_nics(
    handle: &VmHandle,
    joined: &super::network::Joined,
) -> Result<Vec<NicInfo>, String> {
    let client = handle.client("boot").map_err(|e| e.to_string())?;
    // sysfs: mounted by the agent as PID 1, or by the profile's init.
    let listing = client
        .exec("for d in /sys/class/net/*; do echo \"${d##*/} $(cat $d/address)\"; done")
        .map_err(|e| {
            format!(
                "VM {}: boot: cannot list its network interfaces: {e}",
                handle.name()
            )
        })?;
    let text = String::from_utf8_lossy(&listing.stdout);
    let mut by_mac = std::collections::HashMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some(name), Some(mac)) = (words.next(), words.next()) {
            if mac.contains(':') {
                by_mac.insert(mac.to_ascii_lowercase(), name.to_string());
            }
        }
    }
    joined
        .iter()
        .map(|(network, port)| {
            let mac = port.mac.to_string();
            let ifname = by_mac.get(&mac).cloned().ok_or_else(|| {
                format!(
                    "VM {}: network {}: no interface with MAC {mac} appeared in the guest \
                     (does its kernel have virtio_net? `provium kconfig` lists what a kernel \
                     needs; the console has the agent's net lines)",
                    handle.name(),
                    network.name()
                )
            })?;
            Ok(NicInfo {
                network: network.name().to_string(),
                ifname,
                address: port.address,
                mac,
            })
        })
        .collect()
}
