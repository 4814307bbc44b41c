//! Rate limits in front of /api, so a script gone wrong cannot starve everyone else: per API key
//! when keys are configured (and the request carries a valid one), else per client address
//! (see [`client_addr`](super::client_addr), which believes forwarded headers only from trusted
//! proxies). One process's view; behind a load balancer each process limits alone.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use super::auth::bearer_token;
use super::client_addr::client_of;
use super::AppState;
use crate::domain::Owner;
use crate::error::ApiError;

/// Whose bucket a request takes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Client {
    Key(Owner),
    Addr(IpAddr),
}

/// How many checks between sweeps of idle buckets (a full bucket is the same as none).
const SWEEP_EVERY: u64 = 10_000;

pub struct RateLimit {
    limiter: DefaultKeyedRateLimiter<Client>,
    clock: DefaultClock,
    checks: AtomicU64,
}

impl RateLimit {
    /// `per_second` requests a second, with bursts of twice that; `None` when 0 (off).
    pub fn new(per_second: u32) -> Option<Arc<Self>> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(per_second.saturating_mul(2)).unwrap_or(rate);
        Some(Arc::new(Self {
            limiter: DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
        }))
    }

    /// Takes one request from `client`'s bucket, or says how long until there is room.
    fn check(&self, client: &Client) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter
            .check_key(client)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

/// The address a bucket is kept for: an IPv4 address itself, an IPv6 address by its /64 (one
/// host usually has a whole /64 to pick source addresses from).
fn bucket_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

pub async fn limit(
    State((limit, state)): State<(Arc<RateLimit>, AppState)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let key = (!state.keys.is_open())
        .then(|| bearer_token(req.headers()))
        .flatten()
        .filter(|token| state.keys.matches(token.as_bytes()));
    let client = match key {
        Some(token) => Client::Key(Owner::of_key(token)),
        None => Client::Addr(bucket_of(client_of(
            peer.ip(),
            req.headers(),
            &state.config,
        ))),
    };
    match limit.check(&client) {
        Ok(()) => next.run(req).await,
        Err(wait) => ApiError::TooManyRequests {
            // Whole seconds, rounded up: a client that waits this long finds room.
            retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
        }
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_limits_each_client_alone() {
        let l = RateLimit::new(10).unwrap();
        let ip = Client::Addr("10.0.0.1".parse().unwrap());
        let other = Client::Addr("10.0.0.2".parse().unwrap());
        let key = Client::Key(Owner::of_key("k"));
        for _ in 0..20 {
            assert!(l.check(&ip).is_ok());
        }
        let wait = l.check(&ip).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert!(l.check(&other).is_ok(), "clients are limited separately");
        assert!(l.check(&key).is_ok(), "a key has its own bucket");
        assert!(RateLimit::new(0).is_none());
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(bucket_of(a), bucket_of(b));
        assert_ne!(bucket_of(a), bucket_of(c));
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(bucket_of(v4), v4);
        assert_eq!(bucket_of("::ffff:192.0.2.1".parse().unwrap()), v4);
    }
}
