//! Where notifications may be sent: the guard against server-side request forgery.
//!
//! A notification is a POST with a bearer secret to a URL an organisation chose. Left
//! open, that lets anyone holding an sToken make this service post to its own network
//! (loopback, private ranges, cloud metadata at 169.254.169.254, the MDM's admin API). So,
//! unless `allow_private` is set (local development), a notification URL must lead to
//! public addresses only:
//!
//! - when it is configured ([`Notifier::check`]): the URL is parsed with the `url` crate,
//!   which turns every IPv4 spelling (`2130706433`, `0x7f000001`, `0177.0.0.1`, `127.1`)
//!   into its address, and its host is resolved; any non-public address refuses it;
//! - when a notification is sent ([`Notifier::deliver`]): an IP-literal host is checked
//!   again, and names are resolved by [`PublicOnly`], which hands the connector public
//!   addresses only, so a name that resolved to a public address at configuration and to
//!   a private one now (DNS rebinding) connects nowhere. Redirects are never followed and
//!   no proxy is used (a proxy would connect for us, out of the resolver's sight).
//!
//! [`Exempt`] endpoints (`cloudvpp serve`'s own MDM notification endpoint) are allowed
//! although private: exactly their host, port and path prefix.

use cloudvpp_abwire::errors::{self, AppleError};
use reqwest::Url;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// How long resolving a notification host may take when it is configured.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `ip` is a public unicast address, one a notification may be sent to.
pub fn public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => public_v6(v6),
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let special = a == 0 // "this network", 0.0.0.0 (unspecified; reaches loopback on Linux)
        || a == 10 // RFC 1918
        || a == 127 // loopback
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64.0.0/10
        || (a == 169 && b == 254) // link-local (cloud metadata)
        || (a == 172 && (16..32).contains(&b)) // RFC 1918
        || (a == 192 && b == 168) // RFC 1918
        || (a == 192 && b == 0 && (c == 0 || c == 2)) // IETF assignments, TEST-NET-1
        || (a == 198 && (b == 18 || b == 19)) // benchmarking 198.18.0.0/15
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || a >= 224; // multicast 224/4, reserved 240/4, broadcast
    !special
}

fn public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return public_v4(v4);
    }
    let s = ip.segments();
    let special = ip.is_unspecified()
        || ip.is_loopback()
        || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
        || (s[0] & 0xff00) == 0xff00 // multicast ff00::/8
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x2001 && s[1] == 0) // Teredo: a tunnel to some IPv4 address
        || (s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0); // discard 100::/64
    !special
}

/// The IPv4 address an IPv6 address carries: IPv4-mapped `::ffff:a.b.c.d`, IPv4-translated
/// `::ffff:0:a.b.c.d`, IPv4-compatible `::a.b.c.d` (which includes `::` and `::1`, both
/// non-public either way), NAT64 `64:ff9b::/96` and `64:ff9b:1::/48`, and 6to4 `2002::/16`.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo]
        | [0, 0, 0, 0, 0xffff, 0, hi, lo]
        | [0, 0, 0, 0, 0, 0, hi, lo]
        | [0x64, 0xff9b, 0, 0, 0, 0, hi, lo]
        | [0x64, 0xff9b, 1, _, _, _, hi, lo]
        | [0x2002, hi, lo, _, _, _, _, _] => Some(v4(hi, lo)),
        _ => None,
    }
}

/// A private endpoint notifications may go to anyway: exactly this host and port, and
/// paths under this prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exempt {
    host: String,
    port: u16,
    path_prefix: String,
}

impl Exempt {
    /// Allows `url` (`scheme://host:port/prefix`) and every path below its path.
    pub fn new(url: &str) -> Option<Exempt> {
        let u = Url::parse(url).ok()?;
        let mut path_prefix = u.path().trim_end_matches('/').to_string();
        path_prefix.push('/');
        Some(Exempt {
            host: u.host_str()?.to_ascii_lowercase(),
            port: u.port_or_known_default()?,
            path_prefix,
        })
    }

    fn covers(&self, url: &Url) -> bool {
        // `Url` has already resolved `..` and spelled the host canonically.
        url.host_str()
            .is_some_and(|h| h.eq_ignore_ascii_case(&self.host))
            && url.port_or_known_default() == Some(self.port)
            && url.path().starts_with(&self.path_prefix)
    }
}

/// Which notification URLs are accepted.
#[derive(Debug, Clone, Default)]
pub struct NotificationPolicy {
    /// Accept `http://` as well as `https://` (local development).
    pub allow_http: bool,
    /// Accept loopback and private addresses (local development).
    pub allow_private: bool,
    /// Private endpoints accepted anyway.
    pub exempt: Vec<Exempt>,
}

impl NotificationPolicy {
    /// Parses a notification URL: a valid `https` (or allowed `http`) URL with a host and
    /// no user or password (Apple: "only a host and path"), else 9712.
    pub fn parse(&self, url: &str) -> Result<Url, AppleError> {
        if url.chars().any(char::is_control) {
            return Err(errors::NOTIFICATION_URL_NOT_HTTPS);
        }
        let parsed = Url::parse(url).map_err(|_| errors::NOTIFICATION_URL_NOT_HTTPS)?;
        let scheme_ok =
            parsed.scheme() == "https" || (self.allow_http && parsed.scheme() == "http");
        if !scheme_ok
            || parsed.host_str().is_none()
            || !parsed.username().is_empty()
            || parsed.password().is_some()
        {
            return Err(errors::NOTIFICATION_URL_NOT_HTTPS);
        }
        Ok(parsed)
    }

    fn unguarded(&self, url: &Url) -> bool {
        self.allow_private || self.exempt.iter().any(|e| e.covers(url))
    }
}

/// Resolves names for the notification client, keeping public addresses only.
pub struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let public: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| public_ip(a.ip()))
                .collect();
            if public.is_empty() {
                return Err(format!("{host} has no public address").into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Sends notifications where the policy allows.
pub struct Notifier {
    policy: NotificationPolicy,
    /// Connects to public addresses only.
    guarded: reqwest::Client,
    /// The system resolver: for exempt endpoints, or everything when private ones are allowed.
    direct: reqwest::Client,
}

impl Notifier {
    /// A notifier whose requests time out after `timeout`.
    pub fn new(policy: NotificationPolicy, timeout: Duration) -> Self {
        let builder = || {
            reqwest::Client::builder()
                .timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
        };
        Notifier {
            policy,
            guarded: builder()
                .dns_resolver(Arc::new(PublicOnly))
                .build()
                .expect("http client"),
            direct: builder().build().expect("http client"),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &NotificationPolicy {
        &self.policy
    }

    /// Checks a URL being configured: 9712 if it is not a valid URL of an allowed scheme,
    /// 9728 ("unreachable", which it is from where Apple stands) if its host is or
    /// resolves to any non-public address, or does not resolve.
    pub async fn check(&self, url: &str) -> Result<Url, AppleError> {
        let parsed = self.policy.parse(url)?;
        if self.policy.unguarded(&parsed) {
            return Ok(parsed);
        }
        let refused = |why: &str| {
            tracing::info!(
                host = parsed.host_str().unwrap_or(""),
                why,
                "notification URL refused (appsbooks serve --allow-private-notification-urls allows private addresses)"
            );
            errors::NOTIFICATION_URL_UNREACHABLE
        };
        let port = parsed.port_or_known_default().unwrap_or(443);
        let addrs: Vec<IpAddr> = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => vec![IpAddr::V4(ip)],
            Some(url::Host::Ipv6(ip)) => vec![IpAddr::V6(ip)],
            Some(url::Host::Domain(name)) => {
                match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port)))
                    .await
                {
                    Ok(Ok(found)) => found.map(|a| a.ip()).collect(),
                    _ => return Err(refused("the host does not resolve")),
                }
            }
            None => return Err(errors::NOTIFICATION_URL_NOT_HTTPS),
        };
        if addrs.is_empty() || !addrs.iter().all(|ip| public_ip(*ip)) {
            return Err(refused("not a public address"));
        }
        Ok(parsed)
    }

    /// POSTs one envelope with the bearer secret, within `timeout`; `Err` unless the answer
    /// is 2xx. The address is checked again here (see the module documentation).
    pub async fn deliver(
        &self,
        url: &str,
        token: &str,
        body: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let parsed = self.policy.parse(url).map_err(|e| e.message.to_string())?;
        let client = if self.policy.unguarded(&parsed) {
            &self.direct
        } else {
            match parsed.host() {
                Some(url::Host::Ipv4(ip)) if !public_v4(ip) => {
                    return Err("refused: not a public address".into())
                }
                Some(url::Host::Ipv6(ip)) if !public_v6(ip) => {
                    return Err("refused: not a public address".into())
                }
                _ => &self.guarded,
            }
        };
        let resp = client
            .post(parsed)
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| format!("{e}"))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", resp.status().as_u16()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_public(url: &str) -> bool {
        match Url::parse(url).unwrap().host().unwrap() {
            url::Host::Ipv4(ip) => public_v4(ip),
            url::Host::Ipv6(ip) => public_v6(ip),
            url::Host::Domain(d) => panic!("{url} parsed as the name {d}"),
        }
    }

    #[test]
    fn every_spelling_of_a_private_address_is_refused() {
        for url in [
            "https://127.0.0.1/",
            "https://2130706433/",
            "https://0x7f000001/",
            "https://0x7F.0.0.1/",
            "https://0177.0.0.1/",
            "https://017700000001/",
            "https://127.1/",
            "https://127.0.1/",
            "https://0/",
            "https://0.0.0.0/",
            "https://10.1.2.3/",
            "https://167772161/",
            "https://172.16.0.1/",
            "https://172.31.255.255/",
            "https://192.168.0.1/",
            "https://169.254.169.254/",
            "https://0xa9.0xfe.0xa9.0xfe/",
            "https://100.64.0.1/",
            "https://100.127.255.255/",
            "https://224.0.0.1/",
            "https://239.255.255.250/",
            "https://255.255.255.255/",
            "https://240.0.0.1/",
            "https://[::1]/",
            "https://[0:0:0:0:0:0:0:1]/",
            "https://[::]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::ffff:7f00:1]/",
            "https://[0:0:0:0:0:ffff:127.0.0.1]/",
            "https://[::ffff:10.0.0.1]/",
            "https://[::ffff:169.254.169.254]/",
            "https://[::ffff:0:127.0.0.1]/",
            "https://[::127.0.0.1]/",
            "https://[64:ff9b::7f00:1]/",
            "https://[64:ff9b::a9fe:a9fe]/",
            "https://[2002:7f00:1::]/",
            "https://[2002:c0a8:1::1]/",
            "https://[fc00::1]/",
            "https://[fd12:3456::1]/",
            "https://[fe80::1]/",
            "https://[febf::1]/",
            "https://[fec0::1]/",
            "https://[ff02::1]/",
            "https://[2001:db8::1]/",
            "https://[2001::1]/",
        ] {
            assert!(!host_public(url), "{url} passed");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for url in [
            "https://8.8.8.8/",
            "https://1.1.1.1/",
            "https://17.253.144.10/",
            "https://100.63.255.255/",
            "https://100.128.0.1/",
            "https://172.15.255.255/",
            "https://172.32.0.1/",
            "https://192.169.0.1/",
            "https://[2606:4700:4700::1111]/",
            "https://[2a00:1450:4001:80b::200e]/",
            "https://[::ffff:8.8.8.8]/",
            "https://[64:ff9b::808:808]/",
            "https://[2002:808:808::1]/",
        ] {
            assert!(host_public(url), "{url} refused");
        }
    }

    #[test]
    fn exempt_endpoint_is_exactly_its_host_port_and_path() {
        let e = Exempt::new("http://127.0.0.1:9000/notifications/appsbooks").unwrap();
        let covers = |u: &str| e.covers(&Url::parse(u).unwrap());
        assert!(covers("http://127.0.0.1:9000/notifications/appsbooks/1"));
        assert!(covers("http://127.1:9000/notifications/appsbooks/7"));
        assert!(!covers("http://127.0.0.1:9001/notifications/appsbooks/1"));
        assert!(!covers("http://127.0.0.1:9000/api/v1/commands"));
        assert!(!covers(
            "http://127.0.0.1:9000/notifications/appsbooks/../../api/v1/x"
        ));
        assert!(!covers("http://127.0.0.1:9000/notifications/appsbooksX"));
        assert!(!covers("http://localhost:9000/notifications/appsbooks/1"));
        assert!(!covers("http://[::1]:9000/notifications/appsbooks/1"));
    }

    #[test]
    fn urls_with_credentials_or_other_schemes_are_not_valid() {
        let p = NotificationPolicy {
            allow_http: true,
            ..Default::default()
        };
        for url in [
            "ftp://example.com/",
            "https://user:pw@example.com/n",
            "https://user@example.com/n",
            "file:///etc/passwd",
            "not a url",
        ] {
            assert_eq!(p.parse(url).unwrap_err().number, 9712, "{url}");
        }
        assert!(p.parse("http://example.com/n").is_ok());
        let strict = NotificationPolicy::default();
        assert_eq!(
            strict.parse("http://example.com/n").unwrap_err().number,
            9712
        );
    }
}
