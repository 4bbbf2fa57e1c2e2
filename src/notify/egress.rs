//! Where webhooks may be delivered: a tenant admin chooses the URL, so without a guard the
//! service would POST, from inside the operator's network, to whatever that admin names — the
//! cloud metadata endpoint, Redis, an internal admin page (server-side request forgery).
//!
//! Only publicly routable addresses are reachable, plus the networks the operator lists in
//! `notifications.allowed_networks` (an internal Slack relay, say). The check runs twice: when
//! a webhook is added (a clear `422` for the admin) and on every delivery, at name resolution,
//! because a name that resolved to a public address yesterday may resolve to a private one
//! today (DNS rebinding). Proxies from the environment are not used (they would resolve and
//! connect past this guard); a proxy the operator names in `notifications.proxy` connects
//! instead of us, and egress filtering is then its job.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use hickory_resolver::config::ResolverConfig;
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// How long adding a webhook waits for its host name to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// A lookup of a host's addresses (the DNS resolver, or a test's stand-in).
type Lookup =
    dyn Fn(String, u16) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> + Send + Sync;

/// Host names to addresses, asynchronously: each lookup is a future of its own with its own
/// deadline, dropped when its caller gives up. The system resolver (`getaddrinfo`) instead
/// holds a blocking thread until the name server answers, whatever the caller does, so a
/// bound on those threads was shared by every tenant: a tenant admin's host names whose name
/// server never answers took the slots, and every other tenant's deliveries timed out
/// waiting for one.
#[derive(Clone)]
struct HostResolver {
    lookup: Arc<Lookup>,
}

impl std::fmt::Debug for HostResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostResolver").finish_non_exhaustive()
    }
}

impl HostResolver {
    fn new(lookup: Arc<Lookup>) -> Self {
        Self { lookup }
    }

    /// The name servers, search domains and hosts file of the system (`/etc/resolv.conf`,
    /// `/etc/hosts`), asked by an in-process DNS client.
    fn system() -> Self {
        let builder = TokioResolver::builder_tokio().unwrap_or_else(|error| {
            // Names then resolve from the hosts file only; deliveries to others fail, counted.
            tracing::warn!(%error, "no system DNS configuration; webhook host names resolve from /etc/hosts only");
            TokioResolver::builder_with_config(
                ResolverConfig::new(),
                TokioConnectionProvider::default(),
            )
        });
        let resolver = Arc::new(builder.build());
        Self::new(Arc::new(move |host: String, port: u16| {
            let resolver = resolver.clone();
            Box::pin(async move {
                let found = resolver
                    .lookup_ip(host.as_str())
                    .await
                    .map_err(std::io::Error::other)?;
                Ok(found.iter().map(|ip| SocketAddr::new(ip, port)).collect())
            })
        }))
    }

    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        (self.lookup)(host.to_owned(), port).await
    }
}

/// Networks no webhook reaches unless allowed: this host, private and shared address space,
/// link-local (cloud metadata lives there), addresses that are not destinations at all, and
/// IPv6 forms that carry an IPv4 address a host may route to (IPv4-compatible, SIIT, 6to4,
/// Teredo).
const NOT_PUBLIC: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "192.88.99.0/24",
    "::/96",
    "::1/128",
    "::ffff:0:0:0/96",
    "2001::/32",
    "2002::/16",
    "fec0::/10",
    "64:ff9b:1::/48",
    "100::/64",
    "2001:db8::/32",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

/// Which addresses deliveries may connect to.
#[derive(Debug, Clone)]
pub struct EgressPolicy {
    not_public: Vec<IpNet>,
    allowed: Vec<IpNet>,
    resolver: HostResolver,
    /// The operator's proxy (`notifications.proxy`), named by host: resolved without the
    /// guard, since it is ours and usually internal. With a proxy set, webhook hosts are
    /// resolved by the proxy, never here, so this is the only name the resolver sees.
    proxy_host: Option<String>,
}

impl EgressPolicy {
    /// The same policy, with `proxy_host` (the configured proxy's host name) exempt.
    pub fn trusting_proxy(self, proxy_host: Option<String>) -> Self {
        Self {
            proxy_host: proxy_host.map(|h| h.to_ascii_lowercase()),
            ..self
        }
    }

    pub fn new(allowed: Vec<IpNet>) -> Self {
        Self::with_resolver(allowed, HostResolver::system())
    }

    fn with_resolver(allowed: Vec<IpNet>, resolver: HostResolver) -> Self {
        let not_public = NOT_PUBLIC
            .iter()
            .filter_map(|net| net.parse().ok())
            .collect();
        Self {
            not_public,
            allowed,
            resolver,
            proxy_host: None,
        }
    }

    /// Whether a delivery may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        // An IPv4 address written as IPv6 (::ffff:a.b.c.d, or NAT64's 64:ff9b::a.b.c.d) is
        // judged as the IPv4 address it reaches.
        let ip = embedded_ipv4(ip).map_or(ip, IpAddr::V4);
        self.allowed.iter().any(|net| net.contains(&ip))
            || !self.not_public.iter().any(|net| net.contains(&ip))
    }

    /// Checked when a webhook is added: the host must be a permitted address or a name that
    /// resolves to permitted addresses only. A name that does not resolve yet is accepted
    /// (its deliveries fail and retry until it does, and are checked then).
    pub async fn check_url(&self, url: &Url) -> Result<(), String> {
        let Some(host) = url.host_str() else {
            return Err("url: no host".into());
        };
        let port = url.port_or_known_default().unwrap_or(443);
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        let addresses: Vec<IpAddr> = match literal.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => {
                match tokio::time::timeout(RESOLVE_TIMEOUT, self.resolver.resolve(host, port)).await
                {
                    Ok(Ok(found)) => found.iter().map(SocketAddr::ip).collect(),
                    Ok(Err(_)) | Err(_) => return Ok(()),
                }
            }
        };
        let Some(refused) = addresses.iter().find(|ip| !self.permits(**ip)) else {
            return Ok(());
        };
        // Which address a name resolves to is not told: that would map the operator's
        // network for whoever adds webhooks.
        let what = if literal.parse::<IpAddr>().is_ok() {
            format!("{refused} is not a public address")
        } else {
            tracing::debug!(%host, %refused, "webhook host refused");
            format!("{host} resolves to an address that is not public")
        };
        Err(format!(
            "url: {what}; webhooks reach only public addresses and the networks in \
             notifications.allowed_networks"
        ))
    }

    /// Checked before each delivery for a URL whose host is an address (no resolution
    /// happens for those, so the resolver below never sees them).
    pub fn check_literal_host(&self, url: &str) -> Result<(), String> {
        let Ok(url) = Url::parse(url) else {
            return Err("the webhook's URL no longer parses".into());
        };
        let host = url.host_str().unwrap_or("");
        match host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) if !self.permits(ip) => Err(format!(
                "{ip} is not a public address and not in notifications.allowed_networks"
            )),
            _ => Ok(()),
        }
    }

    /// A resolver for the delivery client that drops the addresses deliveries may not reach.
    pub fn resolver(self: &Arc<Self>) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver {
            policy: self.clone(),
        })
    }
}

fn embedded_ipv4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let octets = v6.octets();
    // NAT64's well-known prefix 64:ff9b::/96 carries the IPv4 address in the last 32 bits.
    (octets[..12] == [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0])
        .then(|| Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15]))
}

/// The system resolver, minus the addresses the egress policy forbids.
pub struct GuardedResolver {
    policy: Arc<EgressPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found = policy.resolver.resolve(&host, 0).await?;
            if policy.proxy_host.as_deref() == Some(host.to_ascii_lowercase().as_str()) {
                let addrs: Addrs = Box::new(found.into_iter());
                return Ok(addrs);
            }
            let permitted: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if permitted.is_empty() && !found.is_empty() {
                // Not which address: a tenant admin must not learn what an internal name
                // resolves to from a delivery's error.
                return Err(format!(
                    "{host} resolves only to addresses that are not public and not in \
                     notifications.allowed_networks"
                )
                .into());
            }
            let addrs: Addrs = Box::new(permitted.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn only_public_addresses_unless_allowed() {
        let policy = EgressPolicy::new(vec![]);
        for forbidden in [
            "127.0.0.1",
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::7f00:1",
            "2002:7f00:1::",
            "fec0::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(
                !policy.permits(ip(forbidden)),
                "{forbidden} must be refused"
            );
        }
        for public in [
            "93.184.215.14",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(policy.permits(ip(public)), "{public} must be reachable");
        }
        let allowing = EgressPolicy::new(vec!["10.1.0.0/16".parse().expect("net")]);
        assert!(allowing.permits(ip("10.1.2.3")));
        assert!(!allowing.permits(ip("10.2.0.1")));
        assert!(!allowing.permits(ip("127.0.0.1")));
    }

    /// Host names whose name server never answers, by the hundred, hold up no lookup of
    /// another name: it resolves (and is checked) at once. With lookups on blocking threads
    /// behind a bound shared by every tenant, it waited for a slot that never came free.
    #[tokio::test(start_paused = true)]
    async fn a_name_that_never_resolves_holds_up_no_other_lookup() {
        use std::sync::atomic::{AtomicUsize, Ordering};

        let hanging = Arc::new(AtomicUsize::new(0));
        let lookup = {
            let hanging = hanging.clone();
            move |host: String, port: u16| -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
                if host == "never-answers.example" {
                    hanging.fetch_add(1, Ordering::SeqCst);
                    return Box::pin(std::future::pending());
                }
                Box::pin(async move { Ok(vec![SocketAddr::new(ip("10.9.9.9"), port)]) })
            }
        };
        let policy = Arc::new(EgressPolicy::with_resolver(
            vec![],
            HostResolver::new(Arc::new(lookup)),
        ));
        let never = Url::parse("https://never-answers.example/hook").expect("url");
        let adds: Vec<_> = (0..100)
            .map(|_| {
                let (policy, url) = (policy.clone(), never.clone());
                tokio::spawn(async move { policy.check_url(&url).await })
            })
            .collect();
        while hanging.load(Ordering::SeqCst) < 100 {
            tokio::task::yield_now().await;
        }

        // Resolved, and refused for its private address, before any time passed (the clock is
        // paused: it moves only when every task waits on it).
        let started = tokio::time::Instant::now();
        let other = Url::parse("https://answers.example/hook").expect("url");
        let checked = policy.check_url(&other).await;
        assert!(checked.is_err(), "not resolved and checked: {checked:?}");
        assert_eq!(started.elapsed(), Duration::ZERO);
        // The hanging adds are accepted when their own deadline passes (deliveries check
        // again).
        for add in adds {
            assert_eq!(add.await.expect("join"), Ok(()));
        }
    }
}
