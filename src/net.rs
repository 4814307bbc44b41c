//! Outbound HTTP that strangers choose the target of: which addresses may be reached.
//! The check runs on resolved addresses (a DNS name can point anywhere) and on literal IPs,
//! unless private networks are allowed (development and tests).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
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
        return !ip.is_unspecified() && !ip.is_loopback() && is_public_v4(embedded_v4(ip));
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

fn embedded_v4(ip: Ipv6Addr) -> Ipv4Addr {
    let o = ip.octets();
    Ipv4Addr::new(o[12], o[13], o[14], o[15])
}

/// Why an outbound target was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("refused to connect to {0}: not a public address (set IMGBATCH_ALLOW_PRIVATE_NETWORKS or IMGBATCH_ALLOWED_NETWORKS to allow)")]
pub struct NotPublic(pub String);

/// Which addresses outbound requests may reach.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allow_private: bool,
    allowed: Arc<Vec<IpNet>>,
}

impl AddressPolicy {
    pub fn new(allow_private: bool, allowed: Vec<IpNet>) -> Self {
        Self {
            allow_private,
            allowed: Arc::new(allowed),
        }
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        // Compare mapped forms as the IPv4 address they are.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.allow_private || is_public(ip) || self.allowed.iter().any(|n| n.contains(&ip))
    }

    /// Checks a URL's host when it is a literal IP (in any spelling: the URL parser has
    /// already turned decimal, octal and hex forms into an address); names are checked after
    /// resolution, by [`AddressPolicy::resolver`].
    pub fn check_url(&self, url: &url::Url) -> Result<(), NotPublic> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            _ => return Ok(()),
        };
        if self.permits(ip) {
            Ok(())
        } else {
            Err(NotPublic(ip.to_string()))
        }
    }

    /// The resolver to install in an HTTP client; None when everything is allowed.
    pub fn resolver(&self) -> Option<Arc<GuardedResolver>> {
        (!self.allow_private).then(|| {
            Arc::new(GuardedResolver {
                policy: self.clone(),
            })
        })
    }
}

/// A resolver that drops refused addresses, so the connection can only go where the check
/// allowed: the check and the connect use the same resolved addresses (no DNS rebinding gap).
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: AddressPolicy,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        let policy = self.policy.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let permitted: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if permitted.is_empty() {
                let shown = addrs
                    .first()
                    .map_or(host.clone(), |a| format!("{host} ({})", a.ip()));
                return Err(Box::new(NotPublic(shown)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(permitted.into_iter()) as Addrs)
        })
    }
}

/// Finds a [`NotPublic`] refusal inside an error chain (a resolver error surfaces wrapped).
pub fn find_refusal(e: &(dyn std::error::Error + 'static)) -> Option<NotPublic> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(np) = s.downcast_ref::<NotPublic>() {
            return Some(np.clone());
        }
        source = s.source();
    }
    None
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
        let strict = AddressPolicy::new(false, vec![]);
        let open = AddressPolicy::new(true, vec![]);
        for u in [
            "http://127.0.0.1/x",
            "http://2130706433/x",
            "http://0x7f000001/x",
            "http://0177.0.0.1/x",
            "http://017700000001/x",
            "http://127.1/x",
            "http://[::1]/x",
            "http://[::ffff:127.0.0.1]/x",
            "http://169.254.169.254/latest",
            "http://[::ffff:a9fe:a9fe]/",
            "http://0/",
        ] {
            let url = url::Url::parse(u).unwrap();
            assert!(strict.check_url(&url).is_err(), "{u} should be refused");
            assert!(open.check_url(&url).is_ok());
        }
        assert!(strict
            .check_url(&url::Url::parse("http://8.8.8.8/").unwrap())
            .is_ok());
        assert!(strict
            .check_url(&url::Url::parse("http://example.com/").unwrap())
            .is_ok());
    }

    #[test]
    fn allowed_networks_open_only_themselves() {
        let p = AddressPolicy::new(
            false,
            vec![
                "127.0.0.2/32".parse().unwrap(),
                "10.1.0.0/16".parse().unwrap(),
            ],
        );
        assert!(p.permits("127.0.0.2".parse().unwrap()));
        assert!(p.permits("::ffff:127.0.0.2".parse().unwrap()));
        assert!(p.permits("10.1.200.3".parse().unwrap()));
        assert!(!p.permits("127.0.0.1".parse().unwrap()));
        assert!(!p.permits("10.2.0.1".parse().unwrap()));
        assert!(p.resolver().is_some());
        assert!(AddressPolicy::new(true, vec![]).resolver().is_none());
    }
}
