//! `EtcdConfig`: where etcd is, how to authenticate, and the lease's timings.

use std::path::PathBuf;
use std::time::Duration;

use crate::Error;
use crate::registry::percent_decode;

const MIN_TTL: Duration = Duration::from_secs(2);

/// How to reach etcd and how to use it.
///
/// Query values are percent-decoded, so a password with `&`, `%`, `=` or `#` is written
/// with `%26`, `%25`, `%3D`, `%23` (a `+` stays a `+`).
///
/// ```
/// use std::time::Duration;
/// use steadfast::registry::EtcdConfig;
///
/// let c = EtcdConfig::parse("127.0.0.1:2379,127.0.0.1:22379?prefix=/prod&ttl=5s")?;
/// assert_eq!(c.endpoints().len(), 2);
/// assert_eq!(c.prefix_str(), "/prod");
/// assert_eq!(c.lease_ttl(), Duration::from_secs(5));
/// assert!(EtcdConfig::parse("127.0.0.1:2379?ttl=1s").unwrap_err().to_string().contains("ttl"));
///
/// let c = EtcdConfig::parse("127.0.0.1:2379?user=app&password=a%26b%25c")?;
/// assert_eq!(c.user_name(), Some("app"));
/// assert!(!format!("{c:?}").contains("a&b%c"), "Debug never shows the password");
/// # Ok::<(), steadfast::Error>(())
/// ```
#[derive(Clone)]
pub struct EtcdConfig {
    pub(super) endpoints: Vec<String>,
    pub(super) prefix: String,
    /// `None`: derived from `prefix`.
    pub(super) config_prefix: Option<String>,
    pub(super) ttl: Duration,
    pub(super) user: Option<(String, String)>,
    pub(super) tls_ca: Option<PathBuf>,
    pub(super) connect_timeout: Duration,
}

impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("config_prefix", &self.config_prefix_str())
            .field("ttl", &self.ttl)
            .field("user", &self.user.as_ref().map(|u| &u.0)) // never the password
            .field("tls_ca", &self.tls_ca)
            .finish()
    }
}

impl EtcdConfig {
    /// Endpoints `host:port`; prefix `/steadfast/services`, TTL 10 s.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(endpoints: I) -> Result<Self, Error> {
        let endpoints: Vec<String> = endpoints.into_iter().map(Into::into).collect();
        if endpoints.is_empty() || endpoints.iter().any(|e| e.trim().is_empty()) {
            return Err(Error::config(
                "registry.etcd.endpoints",
                "give at least one host:port",
            ));
        }
        Ok(EtcdConfig {
            endpoints,
            prefix: "/steadfast/services".into(),
            config_prefix: None,
            ttl: Duration::from_secs(10),
            user: None,
            tls_ca: None,
            connect_timeout: Duration::from_secs(3),
        })
    }

    /// Parses the part of an `etcd://` URL after the scheme.
    pub fn parse(rest: &str) -> Result<Self, Error> {
        let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut c = EtcdConfig::new(hosts.split(',').map(str::trim).filter(|s| !s.is_empty()))?;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v).map_err(|why| {
                Error::config(
                    "registry",
                    format!("etcd option `{k}`: {why}; write `%` as %25 and `&` as %26"),
                )
            })?;
            match k {
                "prefix" => c = c.prefix(&v)?,
                "config_prefix" => c = c.config_prefix(&v)?,
                "ttl" => {
                    let d = crate::duration::parse(&v)
                        .map_err(|e| Error::config("registry.etcd.ttl", e))?;
                    c = c.ttl(d)?;
                }
                "user" => c.user = Some((v, c.user.map(|u| u.1).unwrap_or_default())),
                "password" => c.user = Some((c.user.map(|u| u.0).unwrap_or_default(), v)),
                "tls_ca" => c.tls_ca = Some(PathBuf::from(v)),
                other => {
                    return Err(Error::config(
                        "registry",
                        format!(
                            "unknown etcd option `{other}`; use prefix, config_prefix, ttl, user, password, tls_ca"
                        ),
                    ));
                }
            }
        }
        Ok(c)
    }

    /// The key prefix (default `/steadfast/services`).
    pub fn prefix(mut self, prefix: &str) -> Result<Self, Error> {
        if !prefix.starts_with('/') || prefix.ends_with('/') {
            return Err(Error::config(
                "registry.etcd.prefix",
                format!("`{prefix}` must start with '/' and not end with '/'"),
            ));
        }
        self.prefix = prefix.to_owned();
        Ok(self)
    }

    /// Where service configs are stored: `{config_prefix}/{service}`. By default the
    /// prefix with its last segment `services` replaced by `config` (`/steadfast/config`),
    /// or, for a prefix that does not end in `services`, the prefix followed by `-config`
    /// (`/prod` stores them under `/prod-config`).
    ///
    /// ```
    /// use steadfast::registry::EtcdConfig;
    /// let c = EtcdConfig::parse("127.0.0.1:2379")?;
    /// assert_eq!(c.config_prefix_str(), "/steadfast/config");
    /// let c = EtcdConfig::parse("127.0.0.1:2379?prefix=/prod")?;
    /// assert_eq!(c.config_prefix_str(), "/prod-config");
    /// let c = EtcdConfig::parse("127.0.0.1:2379?config_prefix=/ops/grpc-config")?;
    /// assert_eq!(c.config_prefix_str(), "/ops/grpc-config");
    /// # Ok::<(), steadfast::Error>(())
    /// ```
    pub fn config_prefix(mut self, prefix: &str) -> Result<Self, Error> {
        if !prefix.starts_with('/') || prefix.ends_with('/') {
            return Err(Error::config(
                "registry.etcd.config_prefix",
                format!("`{prefix}` must start with '/' and not end with '/'"),
            ));
        }
        self.config_prefix = Some(prefix.to_owned());
        Ok(self)
    }

    /// The lease TTL (default 10 s, at least 2 s). Keepalive runs every TTL/3.
    pub fn ttl(mut self, ttl: Duration) -> Result<Self, Error> {
        if ttl < MIN_TTL {
            return Err(Error::config(
                "registry.etcd.ttl",
                format!("{ttl:?} is under 2s; a shorter lease expires on ordinary hiccups"),
            ));
        }
        self.ttl = ttl;
        Ok(self)
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }
    /// The key prefix.
    pub fn prefix_str(&self) -> &str {
        &self.prefix
    }
    /// Where service configs are stored (see [`EtcdConfig::config_prefix`]).
    pub fn config_prefix_str(&self) -> String {
        match &self.config_prefix {
            Some(p) => p.clone(),
            None => match self.prefix.rsplit_once('/') {
                Some((parent, "services")) if !parent.is_empty() => format!("{parent}/config"),
                _ => format!("{}-config", self.prefix),
            },
        }
    }
    /// The lease TTL.
    pub fn lease_ttl(&self) -> Duration {
        self.ttl
    }
    /// The user name, if etcd auth is used.
    pub fn user_name(&self) -> Option<&str> {
        self.user.as_ref().map(|u| u.0.as_str())
    }

    /// How long one lease or key request may take: a quarter of the TTL (0.5 s to 5 s), so
    /// that a request stuck on a frozen member is given up, and retried on another member,
    /// well before the lease it protects expires.
    pub fn request_timeout(&self) -> Duration {
        (self.ttl / 4).clamp(Duration::from_millis(500), Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded_and_bad_escapes_name_the_option() {
        let c = EtcdConfig::parse("h:1?user=a%40b&password=p%26q%25r%3Ds+t").unwrap();
        assert_eq!(
            c.user,
            Some(("a@b".to_owned(), "p&q%r=s+t".to_owned())),
            "decoded, and `+` kept"
        );
        let err = EtcdConfig::parse("h:1?password=100%")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`password`") && err.contains("%25"), "{err}");
        assert!(!err.contains("100"), "no secret in the error: {err}");
    }

    #[test]
    fn request_timeout_is_well_under_the_ttl() {
        let c = EtcdConfig::new(["h:1"]).unwrap();
        assert_eq!(c.request_timeout(), Duration::from_millis(2500));
        let c = c.ttl(Duration::from_secs(2)).unwrap();
        assert_eq!(c.request_timeout(), Duration::from_millis(500));
    }
}
