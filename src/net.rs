//! Outbound HTTP that strangers choose the target of: which addresses may be reached.
//! The check runs on resolved addresses (a DNS name can point anywhere) and on literal IPs,
//! unless private networks are allowed (development and tests).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Is this address on the public internet? Everything else (loopback, private, link-local,
/// CGNAT, multicast, documentation, …) is refused for outbound requests.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0                                   // "this network"
        || (a == 100 && (64..128).contains(&b))     // CGNAT 100.64/10
        || (a == 192 && b == 0 && c == 0)           // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19))       // benchmarking 198.18/15
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let seg = ip.segments();
    // IPv4-compatible ::a.b.c.d (deprecated, but some stacks still route it).
    if seg[..6].iter().all(|&s| s == 0) {
        return !ip.is_unspecified()
            && !ip.is_loopback()
            && is_public_v4(Ipv4Addr::new(
                (seg[6] >> 8) as u8,
                seg[6] as u8,
                (seg[7] >> 8) as u8,
                seg[7] as u8,
            ));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (seg[0] & 0xfe00) == 0xfc00               // unique local fc00::/7
        || (seg[0] & 0xffc0) == 0xfe80               // link-local fe80::/10
        || (seg[0] & 0xffc0) == 0xfec0               // site-local (deprecated)
        || (seg[0] == 0x2001 && seg[1] == 0x0db8)    // documentation
        || (seg[0] == 0x0064 && seg[1] == 0xff9b)    // NAT64 can reach private v4
        || seg[0] == 0x2002                          // 6to4 embeds arbitrary v4
        || (seg[0] == 0x2001 && seg[1] == 0)) // Teredo
}

/// Why an outbound target was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("refused to connect to {0}: not a public address (set IMGBATCH_ALLOW_PRIVATE_NETWORKS to allow)")]
pub struct NotPublic(pub String);

/// Checks a URL's host when it is a literal IP; names are checked after resolution.
pub fn check_literal_host(url: &url::Url, allow_private: bool) -> Result<(), NotPublic> {
    if allow_private {
        return Ok(());
    }
    let ip = match url.host() {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        _ => return Ok(()),
    };
    if is_public(ip) {
        Ok(())
    } else {
        Err(NotPublic(ip.to_string()))
    }
}

/// A resolver that drops non-public addresses, so the connection can only go where the check
/// allowed: the check and the connect use the same resolved addresses (no DNS rebinding gap).
#[derive(Debug, Clone)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| is_public(a.ip()))
                .collect();
            if public.is_empty() {
                let shown = addrs
                    .first()
                    .map_or(host.clone(), |a| format!("{host} ({})", a.ip()));
                return Err(Box::new(NotPublic(shown)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

pub fn guarded_resolver() -> Arc<GuardedResolver> {
    Arc::new(GuardedResolver)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(s: &str) -> bool {
        is_public(s.parse().unwrap())
    }

    #[test]
    fn classifies_addresses() {
        for s in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.9",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "2001:db8::1",
            "64:ff9b::a00:1",
            "2002:7f00:1::1",
        ] {
            assert!(!public(s), "{s} should be refused");
        }
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(public(s), "{s} should be allowed");
        }
    }

    #[test]
    fn literal_hosts_in_every_spelling_are_checked() {
        for u in [
            "http://127.0.0.1/x",
            "http://2130706433/x",
            "http://0x7f000001/x",
            "http://0177.0.0.1/x",
            "http://[::1]/x",
            "http://[::ffff:127.0.0.1]/x",
            "http://169.254.169.254/latest",
        ] {
            let url = url::Url::parse(u).unwrap();
            assert!(
                check_literal_host(&url, false).is_err(),
                "{u} should be refused"
            );
            assert!(check_literal_host(&url, true).is_ok());
        }
        assert!(check_literal_host(&url::Url::parse("http://8.8.8.8/").unwrap(), false).is_ok());
        assert!(
            check_literal_host(&url::Url::parse("http://example.com/").unwrap(), false).is_ok()
        );
    }
}
