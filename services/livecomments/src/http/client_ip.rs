//! Which address a request comes from, for the per-IP stream limit.
//!
//! Behind a reverse proxy every viewer arrives from the proxy's address, so a per-IP limit on
//! the socket's peer would be one shared bucket (or, raised to fit, no limit at all). With
//! `--trusted-proxies`, a request whose peer is a trusted proxy is attributed to the
//! rightmost `X-Forwarded-For` address that is not itself a trusted proxy: the address the
//! outermost trusted proxy saw. Addresses to the left of it were written by the client and
//! prove nothing, so they are never used. Without the flag the header is ignored.

use std::net::IpAddr;

pub use livecomments_shared::Cidr;

use axum::http::HeaderMap;

/// The client address of a request that arrived from `peer`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let mut ip = peer.to_canonical();
    if !is_trusted(ip) {
        return ip;
    }
    // Several headers read as one list, in order; walk it from the right.
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(list) = value.to_str() else {
            return ip;
        };
        for hop in list.rsplit(',') {
            let Ok(addr) = hop.trim().parse::<IpAddr>() else {
                // Garbage: nothing further left can be trusted either.
                return ip;
            };
            ip = addr.to_canonical();
            if !is_trusted(ip) {
                return ip;
            }
        }
    }
    ip
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_parse_and_match() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.200.3.4")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(
            c.contains(ip("::ffff:10.1.2.3")),
            "IPv4-mapped IPv6 is the IPv4 address"
        );
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "proxy",
            "::/129",
            "1.2.3.4/x",
            "",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_header_counts_only_from_a_trusted_proxy() {
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        let h = headers(&["203.0.113.5"]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &trusted), ip("203.0.113.5"));
        // A client talking to us directly cannot choose its address.
        assert_eq!(
            client_ip(ip("198.51.100.7"), &h, &trusted),
            ip("198.51.100.7")
        );
        // Without trusted proxies the header is ignored.
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &[]), ip("10.0.0.2"));
    }

    #[test]
    fn the_rightmost_untrusted_hop_wins_over_what_the_client_wrote() {
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        // The client sent "X-Forwarded-For: 1.1.1.1"; the proxy appended what it saw.
        let h = headers(&["1.1.1.1, 203.0.113.5, 10.0.0.9"]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &trusted), ip("203.0.113.5"));
        // The same split over two header lines.
        let h = headers(&["1.1.1.1", "203.0.113.5"]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &trusted), ip("203.0.113.5"));
        // Garbage stops the walk at the last trusted hop.
        let h = headers(&["203.0.113.5, not-an-ip"]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &trusted), ip("10.0.0.2"));
        // Only trusted hops: the leftmost of them.
        let h = headers(&["10.1.1.1"]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &trusted), ip("10.1.1.1"));
    }
}
