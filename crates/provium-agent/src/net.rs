//! The guest's network interfaces on the host's networks (`vm:boot{networks = …}`),
//! configured before the test gets the VM, with ioctls only — so it works in an
//! initramfs without `ip` — and without mounting anything (no /proc, no /sys: init's
//! namespace stays as the profile left it).
//!
//! The host writes `<shim>/net`, one line per NIC: `MAC ADDRESS/PREFIX MTU`. The
//! interface with that MAC gets the MTU, the address and netmask (and with them the
//! kernel's route to the subnet) and is brought up; `lo` is brought up too. When the
//! NIC drivers are modules, the host lists them in `<shim>/modules-net.order`, loaded
//! only for a VM on a network.

use std::ffi::CStr;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::log::log;

/// One NIC as the host described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub mac: [u8; 6],
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub mtu: u32,
}

/// How long a NIC's driver may take to register the interface after its module
/// loaded (PCI probing is synchronous, but be generous).
const APPEAR_WAIT: Duration = Duration::from_secs(3);

/// Parses the host's `net` file; a bad line is logged and skipped.
pub fn parse(text: &str) -> Vec<Nic> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .filter_map(|line| match parse_line(line) {
            Some(nic) => Some(nic),
            None => {
                log!("net: ignoring a bad line in the host's network file: {line:?}");
                None
            }
        })
        .collect()
}

fn parse_line(line: &str) -> Option<Nic> {
    let mut fields = line.split_whitespace();
    let mac = fields.next()?;
    let (address, prefix) = fields.next()?.split_once('/')?;
    let mtu = fields.next()?.parse().ok()?;
    let mut bytes = [0u8; 6];
    let mut parts = mac.split(':');
    for byte in &mut bytes {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    if parts.next().is_some() || fields.next().is_some() {
        return None;
    }
    let prefix: u8 = prefix.parse().ok()?;
    (prefix <= 32).then_some(())?;
    Some(Nic {
        mac: bytes,
        address: address.parse().ok()?,
        prefix,
        mtu,
    })
}

/// Configures every NIC of `<shim_dir>/net` (if the file exists), logging what it
/// did or why it could not, one line per NIC, on the console.
pub fn configure(shim_dir: &str) {
    let Ok(text) = std::fs::read_to_string(format!("{shim_dir}/net")) else {
        return;
    };
    let nics = parse(&text);
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return log!("net: socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Err(e) = set_up(&sock, "lo") {
        log!("net: lo: {e}");
    }
    for nic in nics {
        let mac = show_mac(&nic.mac);
        let deadline = Instant::now() + APPEAR_WAIT;
        let name = loop {
            if let Some(name) = find_by_mac(&sock, &nic.mac) {
                break Some(name);
            }
            if Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let Some(name) = name else {
            log!("net: no interface with MAC {mac} (is virtio_net in the kernel?)");
            continue;
        };
        match apply(&sock, &name, &nic) {
            Ok(()) => log!(
                "net: {name} ({mac}) is {}/{}, mtu {}",
                nic.address,
                nic.prefix,
                nic.mtu
            ),
            Err(e) => log!("net: {name} ({mac}): {e}"),
        }
    }
}

fn show_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn request(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *dst = src as libc::c_char;
    }
    req
}

fn ioctl(
    sock: &OwnedFd,
    what: &str,
    op: libc::c_ulong,
    req: &mut libc::ifreq,
) -> Result<(), String> {
    // SAFETY: every request used here reads or writes one ifreq, which `req` is.
    if unsafe { libc::ioctl(sock.as_raw_fd(), op as _, req as *mut libc::ifreq) } == 0 {
        Ok(())
    } else {
        Err(format!("{what}: {}", std::io::Error::last_os_error()))
    }
}

/// The interface whose hardware address is `mac`, by index (1 up to 256).
fn find_by_mac(sock: &OwnedFd, mac: &[u8; 6]) -> Option<String> {
    for index in 1..=256 {
        let mut req = request("");
        req.ifr_ifru.ifru_ifindex = index;
        if ioctl(sock, "SIOCGIFNAME", libc::SIOCGIFNAME, &mut req).is_err() {
            continue;
        }
        // SAFETY: the kernel wrote a NUL-terminated name into ifr_name.
        let name = unsafe { CStr::from_ptr(req.ifr_name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let mut hw = request(&name);
        if ioctl(sock, "SIOCGIFHWADDR", libc::SIOCGIFHWADDR, &mut hw).is_err() {
            continue;
        }
        // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
        let data = unsafe { hw.ifr_ifru.ifru_hwaddr.sa_data };
        if data
            .iter()
            .take(6)
            .map(|b| *b as u8)
            .eq(mac.iter().copied())
        {
            return Some(name);
        }
    }
    None
}

fn sockaddr_in(address: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(address).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux; the kernel reads
    // the address as a sockaddr_in because of its family.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn apply(sock: &OwnedFd, name: &str, nic: &Nic) -> Result<(), String> {
    let mut req = request(name);
    req.ifr_ifru.ifru_mtu = i32::try_from(nic.mtu).unwrap_or(i32::MAX);
    ioctl(sock, "SIOCSIFMTU", libc::SIOCSIFMTU, &mut req)?;
    let mut req = request(name);
    req.ifr_ifru.ifru_addr = sockaddr_in(nic.address);
    ioctl(sock, "SIOCSIFADDR", libc::SIOCSIFADDR, &mut req)?;
    let mask = u32::MAX
        .checked_shl(32 - u32::from(nic.prefix))
        .unwrap_or(0);
    let mut req = request(name);
    req.ifr_ifru.ifru_netmask = sockaddr_in(Ipv4Addr::from(mask));
    ioctl(sock, "SIOCSIFNETMASK", libc::SIOCSIFNETMASK, &mut req)?;
    set_up(sock, name)
}

fn set_up(sock: &OwnedFd, name: &str) -> Result<(), String> {
    let mut req = request(name);
    ioctl(sock, "SIOCGIFFLAGS", libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl(sock, "SIOCSIFFLAGS", libc::SIOCSIFFLAGS, &mut req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_and_bad_ones_are_skipped() {
        let nics = parse(
            "02:70:76:64:00:02 10.100.0.2/24 1500\n\nnot a line\n\
             02:70:76:64:01:03 10.100.1.3/24 9000\n02:70:76 10.0.0.1/24 1500\n",
        );
        assert_eq!(
            nics,
            [
                Nic {
                    mac: [0x02, 0x70, 0x76, 0x64, 0x00, 0x02],
                    address: Ipv4Addr::new(10, 100, 0, 2),
                    prefix: 24,
                    mtu: 1500,
                },
                Nic {
                    mac: [0x02, 0x70, 0x76, 0x64, 0x01, 0x03],
                    address: Ipv4Addr::new(10, 100, 1, 3),
                    prefix: 24,
                    mtu: 9000,
                },
            ]
        );
        assert_eq!(show_mac(&nics[0].mac), "02:70:76:64:00:02");
    }

    /// On the host, as an ordinary process: `lo` exists at index 1 with a zero MAC.
    #[test]
    fn the_loopback_interface_is_found_by_its_address() {
        // SAFETY: as in `configure`.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0);
        // SAFETY: fresh descriptor.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        assert_eq!(find_by_mac(&sock, &[0; 6]).as_deref(), Some("lo"));
        assert_eq!(find_by_mac(&sock, &[2, 0x70, 0x76, 9, 9, 9]), None);
    }
}
