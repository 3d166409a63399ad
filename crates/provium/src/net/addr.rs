//! Addresses on switched networks: a distinct `10.x.y.0/24` per network within a run,
//! guest addresses from `.2` up (`.1` stays free for a later host-side endpoint such as
//! a gateway, so adding one will not renumber guests), and MACs derived from both.
//!
//! Subnets start at `10.100.0.0/24`, well clear of QEMU's user-mode network
//! (`10.0.2.0/24`), and count up through `10.254.255.0/24`. A guest's MAC is
//! `02:70:76:x:y:h` for `10.x.y.h`: locally administered, unicast, and readable in a
//! capture. Guests on different networks never share a segment, so MACs only need to
//! be unique per network; the derivation makes them unique per run anyway.

use std::fmt;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use super::NetError;

/// The first subnet's second octet.
const FIRST_SECOND_OCTET: u32 = 100;
/// Subnets `10.100.0.0/24` … `10.254.255.0/24`.
const SUBNET_COUNT: u32 = (254 - FIRST_SECOND_OCTET + 1) * 256;
/// The first guest's host octet; `.1` is reserved.
const FIRST_HOST: u8 = 2;
/// Guests `.2` … `.254`.
pub const MAX_GUESTS: usize = 253;
/// `02` (locally administered, unicast) then `pv`.
const MAC_PREFIX: [u8; 3] = [0x02, 0x70, 0x76];

/// A `/24` network: `10.x.y.0/24` from [`Subnet::nth`], or any one a test names
/// ([`Subnet::parse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subnet {
    first: u8,
    second: u8,
    third: u8,
}

impl Subnet {
    /// The `index`th subnet of a run (0 is `10.100.0.0/24`), if there is one.
    pub fn nth(index: usize) -> Option<Subnet> {
        let index = u32::try_from(index).ok().filter(|&i| i < SUBNET_COUNT)?;
        Some(Subnet {
            first: 10,
            second: (FIRST_SECOND_OCTET + index / 256) as u8,
            third: (index % 256) as u8,
        })
    }

    /// `A.B.C.0/24` as a test writes it (`provium.network{subnet = …}`); only /24
    /// networks, whose host part is 0.
    pub fn parse(text: &str) -> Result<Subnet, String> {
        let usage = || format!("{text:?} is not a /24 network such as \"192.168.7.0/24\"");
        let (address, prefix) = text.split_once('/').ok_or_else(usage)?;
        let address: Ipv4Addr = address.parse().map_err(|_| usage())?;
        if prefix != "24" {
            return Err(format!("{text:?}: only /24 networks are supported"));
        }
        let [first, second, third, host] = address.octets();
        if host != 0 {
            return Err(format!(
                "{text:?}: the host part must be 0 (did you mean \"{first}.{second}.{third}.0/24\"?)"
            ));
        }
        Ok(Subnet {
            first,
            second,
            third,
        })
    }

    /// Its position in the run's sequence (the inverse of [`Subnet::nth`]).
    /// For a subnet a test named, a number that only keeps its socket names apart.
    pub fn index(&self) -> usize {
        u32::from(self.second)
            .wrapping_sub(FIRST_SECOND_OCTET)
            .wrapping_mul(256)
            .wrapping_add(u32::from(self.third)) as usize
    }

    /// The network address, `10.x.y.0`.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.first, self.second, self.third, 0)
    }

    pub fn prefix_len(&self) -> u8 {
        24
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::new(255, 255, 255, 0)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.first, self.second, self.third, 255)
    }

    /// `10.x.y.1`, kept free of guests.
    pub fn reserved(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.first, self.second, self.third, 1)
    }

    /// The address of the `guest`th guest (0-based): `.2`, `.3`, … `.254`.
    pub fn guest(&self, guest: usize) -> Option<Ipv4Addr> {
        let host = host_octet(guest)?;
        Some(Ipv4Addr::new(self.first, self.second, self.third, host))
    }

    /// The MAC of the `guest`th guest: `02:70:76:x:y:h` for `10.x.y.h`.
    pub fn guest_mac(&self, guest: usize) -> Option<MacAddr> {
        let host = host_octet(guest)?;
        let [a, b, c] = MAC_PREFIX;
        Some(MacAddr([a, b, c, self.second, self.third, host]))
    }

    /// Whether `address` is inside this /24.
    pub fn contains(&self, address: Ipv4Addr) -> bool {
        let [a, b, c, _] = address.octets();
        (a, b, c) == (self.first, self.second, self.third)
    }
}

fn host_octet(guest: usize) -> Option<u8> {
    (guest < MAX_GUESTS).then(|| FIRST_HOST + guest as u8)
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix_len())
    }
}

/// Hands out subnets in order, one per network, for one run. Shared by the run's file
/// threads (`&self`).
#[derive(Debug, Default)]
pub struct SubnetAllocator {
    next: AtomicU32,
}

impl SubnetAllocator {
    pub const fn new() -> SubnetAllocator {
        SubnetAllocator {
            next: AtomicU32::new(0),
        }
    }

    /// The next free subnet, for the network named `network`.
    pub fn allocate(&self, network: &str) -> Result<Subnet, NetError> {
        let taken = self
            .next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < SUBNET_COUNT).then_some(n + 1)
            })
            .map_err(|n| NetError::SubnetsExhausted {
                network: network.to_string(),
                allocated: n as usize,
            })?;
        Ok(Subnet::nth(taken as usize).expect("index checked against SUBNET_COUNT"))
    }
}

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// Broadcast and multicast addresses have the group bit set.
    pub fn is_group(&self) -> bool {
        self.0[0] & 1 == 1
    }

    /// The destination and source of an Ethernet frame; `None` when the frame is
    /// shorter than an Ethernet header (two MACs and the EtherType).
    pub fn addresses_of(frame: &[u8]) -> Option<(MacAddr, MacAddr)> {
        if frame.len() < 14 {
            return None;
        }
        let destination = frame[0..6].try_into().ok().map(MacAddr)?;
        let source = frame[6..12].try_into().ok().map(MacAddr)?;
        Some((destination, source))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_subnet_parses_and_numbers_its_guests() {
        let subnet = Subnet::parse("192.168.7.0/24").unwrap();
        assert_eq!(subnet.to_string(), "192.168.7.0/24");
        assert_eq!(subnet.guest(0), Some(Ipv4Addr::new(192, 168, 7, 2)));
        assert!(subnet.contains(Ipv4Addr::new(192, 168, 7, 200)));
        assert_eq!(
            Subnet::parse("10.1.2.0/16").unwrap_err(),
            "\"10.1.2.0/16\": only /24 networks are supported"
        );
        assert!(Subnet::parse("10.1.2.5/24")
            .unwrap_err()
            .contains("did you mean \"10.1.2.0/24\""));
        assert!(Subnet::parse("ten").is_err());
    }
    use std::collections::BTreeSet;

    #[test]
    fn subnets_are_distinct_and_ordered() {
        let allocator = SubnetAllocator::new();
        let first = allocator.allocate("a").unwrap();
        let second = allocator.allocate("b").unwrap();
        assert_eq!(first.to_string(), "10.100.0.0/24");
        assert_eq!(second.to_string(), "10.100.1.0/24");
        let many: BTreeSet<Subnet> = (0..600).map(|i| Subnet::nth(i).unwrap()).collect();
        assert_eq!(many.len(), 600);
        assert_eq!(Subnet::nth(256).unwrap().to_string(), "10.101.0.0/24");
        for i in [0, 255, 256, 39_679] {
            assert_eq!(Subnet::nth(i).unwrap().index(), i);
        }
        assert_eq!(Subnet::nth(39_679).unwrap().to_string(), "10.254.255.0/24");
    }

    #[test]
    fn allocator_reports_exhaustion_naming_the_network() {
        let allocator = SubnetAllocator {
            next: AtomicU32::new(SUBNET_COUNT - 1),
        };
        assert!(allocator.allocate("last").is_ok());
        let err = allocator.allocate("one-too-many").unwrap_err();
        assert!(
            matches!(&err, NetError::SubnetsExhausted { network, allocated }
                if network == "one-too-many" && *allocated == SUBNET_COUNT as usize),
            "{err:?}"
        );
        assert!(err.to_string().contains("one-too-many"));
    }

    #[test]
    fn guests_start_at_two_and_macs_mirror_addresses() {
        let subnet = Subnet::nth(257).unwrap();
        assert_eq!(subnet.reserved(), Ipv4Addr::new(10, 101, 1, 1));
        assert_eq!(subnet.guest(0), Some(Ipv4Addr::new(10, 101, 1, 2)));
        assert_eq!(subnet.guest(252), Some(Ipv4Addr::new(10, 101, 1, 254)));
        assert_eq!(subnet.guest(253), None);
        let mac = subnet.guest_mac(1).unwrap();
        assert_eq!(mac.to_string(), "02:70:76:65:01:03");
        assert!(!mac.is_group());
        assert_eq!(mac.0[0] & 2, 2, "locally administered");
        assert!(subnet.contains(subnet.guest(5).unwrap()));
        assert!(!subnet.contains(Ipv4Addr::new(10, 101, 2, 2)));
    }

    #[test]
    fn frame_addresses() {
        let mut frame = [0u8; 14];
        frame[0..6].copy_from_slice(&[0xff; 6]);
        frame[6..12].copy_from_slice(&[2, 0x70, 0x76, 100, 0, 2]);
        let (destination, source) = MacAddr::addresses_of(&frame).unwrap();
        assert!(destination.is_group());
        assert_eq!(destination, MacAddr::BROADCAST);
        assert_eq!(source.to_string(), "02:70:76:64:00:02");
        assert_eq!(MacAddr::addresses_of(&frame[..13]), None);
    }
}
