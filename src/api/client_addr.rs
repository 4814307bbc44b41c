//! Who the client is, by address: the TCP peer, or, when the peer is one of the configured
//! trusted proxies (`IMGBATCH_TRUSTED_PROXIES`), the address that proxy says it forwarded for,
//! read from the one header the proxies write (`IMGBATCH_FORWARDED_HEADER`: `X-Forwarded-For`,
//! or `Forwarded` of RFC 7239). Only that header counts: most proxies append to one and pass
//! the other through as the client sent it, so reading both would let a client choose its own
//! rate-limit bucket. From a peer that is not trusted, neither is read.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

use crate::config::{Config, ForwardedHeader};

/// The client's address, given the TCP peer, the request's headers and the settings.
pub fn client_of(peer: IpAddr, headers: &HeaderMap, config: &Config) -> IpAddr {
    client_addr(
        peer,
        headers,
        &config.trusted_proxies,
        config.forwarded_header,
    )
}

fn client_addr(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
    header: ForwardedHeader,
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops = match header {
        ForwardedHeader::XForwardedFor => x_forwarded_for(headers),
        ForwardedHeader::Forwarded => forwarded(headers),
    };
    // Right to left: each trusted proxy appended the address it received from. The first hop
    // that is not one of ours is the client; anything left of it could be made up.
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop {
            Some(ip) => {
                client = *ip;
                if !is_trusted(ip) {
                    break;
                }
            }
            // "unknown", an obfuscated name or garbage: no address to go further with.
            None => break,
        }
    }
    client
}

/// `Forwarded`'s `for=` values, oldest first; `None` for one that is not an address.
fn forwarded(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_node(value.trim().trim_matches('"')))
            })
        })
        .collect()
}

/// `X-Forwarded-For`'s hops, oldest first; `None` for one that is not an address.
fn x_forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|hop| parse_node(hop.trim()))
        .collect()
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:4711`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (host, port) = node.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for &(k, v) in pairs {
            h.append(k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: IpAddr = "10.1.1.1".parse().unwrap();
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();
        let xff = ForwardedHeader::XForwardedFor;
        let addr = |s: &str| s.parse::<IpAddr>().unwrap();
        let h = headers(&[("x-forwarded-for", "203.0.113.9, 10.2.2.2")]);
        assert_eq!(client_addr(proxy, &h, &trusted, xff), addr("203.0.113.9"));
        assert_eq!(
            client_addr(stranger, &h, &trusted, xff),
            stranger,
            "untrusted peer"
        );
        assert_eq!(
            client_addr(proxy, &h, &[], xff),
            proxy,
            "no trusted proxies"
        );
        // A client that sends its own header cannot pick its address: only the hop the
        // trusted proxy appended counts...
        let spoofed = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.9")]);
        assert_eq!(
            client_addr(proxy, &spoofed, &trusted, xff),
            addr("203.0.113.9")
        );
        // ...nor by sending the header the proxy does not write.
        let other = headers(&[
            ("forwarded", "for=1.2.3.4"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(
            client_addr(proxy, &other, &trusted, xff),
            addr("203.0.113.9")
        );
        assert_eq!(client_addr(proxy, &HeaderMap::new(), &trusted, xff), proxy);
        let unknown = headers(&[("x-forwarded-for", "unknown")]);
        assert_eq!(client_addr(proxy, &unknown, &trusted, xff), proxy);
    }

    #[test]
    fn forwarded_is_read_when_configured_in_every_node_form() {
        let trusted: Vec<IpNet> = vec!["127.0.0.1/32".parse().unwrap()];
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        for (value, want) in [
            ("for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60"),
            ("for=\"[2001:db8:cafe::17]:4711\"", "2001:db8:cafe::17"),
            ("For=\"192.0.2.43:47011\", for=127.0.0.1", "192.0.2.43"),
            ("for=2001:db8::1", "2001:db8::1"),
        ] {
            let h = headers(&[("forwarded", value), ("x-forwarded-for", "9.9.9.9")]);
            assert_eq!(
                client_addr(peer, &h, &trusted, ForwardedHeader::Forwarded),
                want.parse::<IpAddr>().unwrap(),
                "{value}"
            );
        }
    }
}
