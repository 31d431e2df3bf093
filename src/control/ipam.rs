//! Virtual IP allocation inside a party subnet. Pure: the registry owns the allocation table
//! and passes it in.
//!
//! Rules: the lowest free host address, /24 after /24, skipping each /24's `.0` and `.255`
//! (and the subnet's own network and broadcast addresses when it is smaller than a /24).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Returns whether `ip` may be handed to a member of `subnet`.
pub fn is_assignable(subnet: Ipv4Net, ip: Ipv4Addr) -> bool {
    if !subnet.contains(&ip) || ip == subnet.network() || ip == subnet.broadcast() {
        return false;
    }
    let last = ip.octets()[3];
    last != 0 && last != 255
}

/// The lowest assignable address of `subnet` not in `taken`, or `None` when the subnet is full.
pub fn lowest_free(subnet: Ipv4Net, taken: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let first = u32::from(subnet.network());
    let last = u32::from(subnet.broadcast());
    (first..=last)
        .map(Ipv4Addr::from)
        .find(|ip| is_assignable(subnet, *ip) && !taken.contains(ip))
}

/// How many members `subnet` can hold.
pub fn capacity(subnet: Ipv4Net) -> u64 {
    let first = u32::from(subnet.network());
    let last = u32::from(subnet.broadcast());
    (first..=last)
        .filter(|ip| is_assignable(subnet, Ipv4Addr::from(*ip)))
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn first_address_is_dot_one() {
        assert_eq!(
            lowest_free(net("10.66.0.0/16"), &BTreeSet::new()),
            Some(Ipv4Addr::new(10, 66, 0, 1))
        );
    }

    #[test]
    fn fills_lowest_gap_first() {
        let taken: BTreeSet<_> = [1, 2, 4]
            .iter()
            .map(|d| Ipv4Addr::new(10, 66, 0, *d))
            .collect();
        assert_eq!(
            lowest_free(net("10.66.0.0/16"), &taken),
            Some(Ipv4Addr::new(10, 66, 0, 3))
        );
    }

    #[test]
    fn rolls_over_to_next_slash_24_skipping_255_and_0() {
        let taken: BTreeSet<_> = (1..=254).map(|d| Ipv4Addr::new(10, 66, 0, d)).collect();
        assert_eq!(
            lowest_free(net("10.66.0.0/16"), &taken),
            Some(Ipv4Addr::new(10, 66, 1, 1))
        );
    }

    #[test]
    fn reserved_addresses_are_never_assignable() {
        let subnet = net("10.66.0.0/16");
        assert!(!is_assignable(subnet, Ipv4Addr::new(10, 66, 0, 0)));
        assert!(!is_assignable(subnet, Ipv4Addr::new(10, 66, 3, 255)));
        assert!(!is_assignable(subnet, Ipv4Addr::new(10, 66, 4, 0)));
        assert!(!is_assignable(subnet, Ipv4Addr::new(10, 67, 0, 1)));
        assert!(is_assignable(subnet, Ipv4Addr::new(10, 66, 4, 1)));
    }

    #[test]
    fn small_subnet_fills_up() {
        let subnet = net("192.168.7.0/30");
        assert_eq!(capacity(subnet), 2);
        let mut taken = BTreeSet::new();
        taken.insert(lowest_free(subnet, &taken).unwrap());
        taken.insert(lowest_free(subnet, &taken).unwrap());
        assert_eq!(
            taken.iter().copied().collect::<Vec<_>>(),
            vec![Ipv4Addr::new(192, 168, 7, 1), Ipv4Addr::new(192, 168, 7, 2)]
        );
        assert_eq!(lowest_free(subnet, &taken), None);
    }

    #[test]
    fn slash_16_capacity_excludes_dot_zero_and_dot_255() {
        assert_eq!(capacity(net("10.66.0.0/16")), 256 * 254);
    }
}
