//! Where and how a cluster reaches Redis: [`RedisConfig`], checked at start.

use std::time::Duration;

use forkless_worker::rt::Errors as _;
use forkless_worker::Error;

/// Where and how a cluster reaches Redis, for
/// [`Builder::store_backend`](crate::Builder::store_backend) and
/// [`Builder::bus_backend`](crate::Builder::bus_backend). Needs the `redis`
/// feature.
///
/// Every cluster (every host) that uses the same Redis and the same
/// [`prefix`](RedisConfig::prefix) shares one store and one bus.
///
/// # What differs from the in-process backend
///
/// - **Latency**: every store operation is a round trip to Redis (one
///   command or one Lua script, so each one is atomic there). Messages between the slots of one
///   cluster still go in-process; only [`Bus::send_to`] another host,
///   [`Bus::request_to`] and topics go through Redis.
/// - **Locks** are a Redis key set with `NX` and a lease, holding a token
///   that only this lock knows; release commits and frees in one script that
///   checks the token. A lock without a lease of its own is renewed while
///   held (every third of [`lock_lease`](RedisConfig::lock_lease)), so a
///   lock whose host dies (or loses Redis) is freed when the lease runs out.
///   A worker that exits has its locks released, as in-process.
/// - **Waiting on a locked key**: a release publishes on the lock's key,
///   and a host subscribes to it while it has waiters there, so they try
///   again at once (a lock handed from one host to another took 1.3 to
///   2.5 ms here, against 65 to 66 ms by polling alone). A lease that runs
///   out publishes nothing: waiters also look again every 1 ms, doubling up
///   to 100 ms. Waiters are served in no set order (in-process: first come,
///   first served).
/// - **Expiry** is Redis's own (`PEXPIRE`), refreshed on each access;
///   [`CollectionOptions`](forkless_worker::CollectionOptions) are per
///   process, so configure a collection the same way on every host. Keys
///   set before expiry was configured keep no expiry until next touched.
/// - **`len`** scans the collection's keys (`SCAN`): use it for checks and
///   tests, not on a hot path.
/// - **Errors**: when Redis cannot be reached or does not answer within
///   [`timeout`](RedisConfig::timeout), an operation fails with
///   [`Error::is_unavailable`] (it may or may not have been applied); the
///   connection is made again by itself when Redis is back. Nothing panics
///   and nothing waits forever.
/// - **Topics** are Redis pub/sub: at most once. A host that is cut off
///   from Redis misses what is published meanwhile, and `publish` counts the
///   hosts that had subscribers. Messages to another host's slots are a
///   Redis list per host. What a host had not taken off its list when it
///   stopped waits there for its next start under the same name (up to an
///   hour); what it had taken but its workers had not read (at most its
///   inbox capacity, plus one, per host) goes with it. A send to a host that
///   is not up (its presence, renewed every 2 s, lapses 6 s after it
///   stopped, at once when it stops gracefully) is refused.
///
/// [`Bus::send_to`]: forkless_worker::Bus::send_to
/// [`Bus::request_to`]: forkless_worker::Bus::request_to
/// [`Error::is_unavailable`]: forkless_worker::Error::is_unavailable
///
/// # Examples
///
/// ```no_run
/// use forkless_runtime::{Cluster, RedisConfig};
///
/// let redis = RedisConfig::new("redis://127.0.0.1:6379/").host("web-1");
/// let cluster = Cluster::builder()
///     .store_backend(redis.clone())
///     .bus_backend(redis)
///     .start(|worker| async move {
///         let hits = worker.store().collection("hits").incr("total", 1).await?;
///         println!("hit number {hits}, counted across every host");
///         Ok::<(), forkless_worker::Error>(())
///     })?;
/// cluster.join();
/// # Ok::<(), forkless_worker::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub(crate) url: String,
    pub(crate) prefix: String,
    pub(crate) host: Option<String>,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) lock_lease: Duration,
}

impl RedisConfig {
    /// Redis at `url`, such as `redis://127.0.0.1:6379/` or
    /// `redis://:password@host:6379/2`. Checked when the cluster starts.
    pub fn new(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            prefix: "forkless".to_owned(),
            host: None,
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            lock_lease: Duration::from_secs(10),
        }
    }

    /// What every Redis key of this store and bus starts with; clusters
    /// with different prefixes share nothing. The default is `"forkless"`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> RedisConfig {
        self.prefix = prefix.into();
        self
    }

    /// This host's name on the bus: other hosts reach its slots with
    /// [`Bus::send_to`](forkless_worker::Bus::send_to)`(name, slot, ..)`.
    /// Names must be unique among the hosts on one Redis and prefix. The
    /// default is the machine's host name and this process's id
    /// (`web-1-4242`), which changes at each start: set a stable name if
    /// messages should wait for a host that restarts.
    pub fn host(mut self, name: impl Into<String>) -> RedisConfig {
        self.host = Some(name.into());
        self
    }

    /// How long one Redis command may take, connecting included, before
    /// the operation fails with [`Error::is_unavailable`](forkless_worker::Error::is_unavailable).
    /// The default is 2 seconds.
    pub fn timeout(mut self, timeout: Duration) -> RedisConfig {
        self.timeout = timeout;
        self
    }

    /// How long one attempt to connect may take. The default is 1 second.
    pub fn connect_timeout(mut self, timeout: Duration) -> RedisConfig {
        self.connect_timeout = timeout;
        self
    }

    /// The lease of a lock taken without one of its own: renewed while the
    /// lock is held, it frees the lock this long after its host died or lost
    /// Redis. The default is 10 seconds; at least 30 ms.
    pub fn lock_lease(mut self, lease: Duration) -> RedisConfig {
        self.lock_lease = lease;
        self
    }

    pub(crate) fn check(&self) -> Result<(), Error> {
        redis::Client::open(self.url.as_str()).map_err(|e| {
            Error::config(self.scrub(&format!(
                "RedisConfig: cannot use the URL {}: {e}",
                self.shown_url()
            )))
        })?;
        for (what, d) in [
            ("RedisConfig: timeout", self.timeout),
            ("RedisConfig: connect_timeout", self.connect_timeout),
            ("RedisConfig: lock_lease", self.lock_lease),
        ] {
            crate::time::deadline::check_option(what, d)?;
        }
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::config(
                "RedisConfig: timeout and connect_timeout must be more than zero",
            ));
        }
        if self.lock_lease < Duration::from_millis(30) {
            return Err(Error::config(format!(
                "RedisConfig: lock_lease must be at least 30ms, got {:?}",
                self.lock_lease
            )));
        }
        if self.prefix.is_empty() {
            return Err(Error::config("RedisConfig: the prefix must not be empty"));
        }
        if self.host.as_deref() == Some("") {
            return Err(Error::config(
                "RedisConfig: the host name must not be empty",
            ));
        }
        Ok(())
    }

    /// The host name, chosen if not set.
    pub(crate) fn host_name(&self) -> String {
        self.host.clone().unwrap_or_else(|| {
            let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_owned())
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "host".to_owned());
            format!("{machine}-{}", std::process::id())
        })
    }

    /// The URL without its secrets, for messages: everything between the
    /// scheme and the last `@` (user and password, whatever characters the
    /// password holds), and the value of every query parameter but `db`
    /// and `protocol` (`redis+unix:///run/redis.sock?pass=...`), are `***`.
    pub(crate) fn shown_url(&self) -> String {
        let (scheme, userinfo, rest) = self.parts();
        let mut shown = String::from(scheme);
        if userinfo.is_some() {
            shown.push_str("***@");
        }
        let (head, query) = match rest.split_once('?') {
            Some((head, query)) => (head, Some(query)),
            None => (rest, None),
        };
        shown.push_str(head);
        if let Some(query) = query {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, v)) if matches!(k, "db" | "protocol") => format!("{k}={v}"),
                    Some((k, _)) => format!("{k}=***"),
                    None => pair.to_owned(),
                })
                .collect();
            shown.push('?');
            shown.push_str(&pairs.join("&"));
        }
        shown
    }

    /// The URL as `scheme://`, the user part before the last `@` (if any),
    /// and the rest.
    fn parts(&self) -> (&str, Option<&str>, &str) {
        let url = self.url.as_str();
        let Some(i) = url.find("://") else {
            return ("", None, url);
        };
        let (scheme, after) = url.split_at(i + 3);
        match after.rfind('@') {
            Some(at) => (scheme, Some(&after[..at]), &after[at + 1..]),
            None => (scheme, None, after),
        }
    }

    /// The parts of the URL that [`shown_url`](RedisConfig::shown_url)
    /// hides, longest first.
    fn secrets(&self) -> Vec<&str> {
        let (_, userinfo, rest) = self.parts();
        let mut secrets = Vec::new();
        if let Some(userinfo) = userinfo {
            secrets.push(userinfo);
            secrets.extend(userinfo.split(':'));
        }
        let query = rest.split_once('?').map_or("", |(_, q)| q);
        for pair in query.split('&') {
            if let Some((k, v)) = pair.split_once('=') {
                if !matches!(k, "db" | "protocol") {
                    secrets.push(v);
                }
            }
        }
        secrets.retain(|s| s.len() >= 3);
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets
    }

    /// `text` with every secret of the URL replaced by `***`: for messages
    /// that quote what the Redis client said.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in self.secrets() {
            text = text.replace(secret, "***");
        }
        text
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.shown_url())
            .field("prefix", &self.prefix)
            .field("host", &self.host)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("lock_lease", &self.lock_lease)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_checks_name_the_bad_value() {
        assert!(RedisConfig::new("redis://127.0.0.1/").check().is_ok());
        let e = RedisConfig::new("nope://x").check().unwrap_err();
        assert!(e.is_config() && e.to_string().contains("nope://x"), "{e}");
        let e = RedisConfig::new("redis://127.0.0.1/")
            .lock_lease(Duration::from_millis(1))
            .check()
            .unwrap_err();
        assert!(e.is_config() && e.to_string().contains("lock_lease"), "{e}");
        let e = RedisConfig::new("redis://127.0.0.1/")
            .timeout(Duration::ZERO)
            .check()
            .unwrap_err();
        assert!(e.is_config(), "{e}");
        let e = RedisConfig::new("redis://127.0.0.1/")
            .timeout(Duration::MAX)
            .check()
            .unwrap_err();
        assert!(e.is_config() && e.to_string().contains("timeout"), "{e}");
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        let c = RedisConfig::new("redis://:s3cret@db:6379/1");
        assert_eq!(c.shown_url(), "redis://***@db:6379/1");
        assert_eq!(RedisConfig::new("redis://db/").shown_url(), "redis://db/");
        let c = RedisConfig::new("redis://admin:s3cret@db:6379/1");
        assert_eq!(c.shown_url(), "redis://***@db:6379/1");
        let c = RedisConfig::new("redis+unix:///run/redis.sock?db=2&pass=s3cret");
        assert_eq!(c.shown_url(), "redis+unix:///run/redis.sock?db=2&pass=***");
        assert_eq!(c.scrub("AUTH s3cret refused"), "AUTH *** refused");
        // A password with `/`, `?`, `#` or `@` in it, which the URL parser
        // may refuse: hidden whole all the same.
        for url in [
            "redis://:ab/cd+ef=@db:6379/0",
            "redis://user:a?b#c@db/",
            "redis://:p@ss@db/",
        ] {
            let c = RedisConfig::new(url);
            let shown = format!("{} {c:?}", c.shown_url());
            for part in ["ab/cd", "a?b#c", "p@ss"] {
                assert!(!shown.contains(part), "{shown}");
            }
            if let Err(e) = c.check() {
                let text = e.to_string();
                for part in ["ab/cd", "a?b#c", "p@ss"] {
                    assert!(!text.contains(part), "{text}");
                }
            }
        }
        let debug = format!(
            "{:?}",
            RedisConfig::new("redis://u:s3cret@db/?password=t0ken")
        );
        assert!(
            !debug.contains("s3cret") && !debug.contains("t0ken"),
            "{debug}"
        );
        // A bad URL's error names the URL without its password.
        let e = RedisConfig::new("redis://:s3cret@db:notaport/")
            .check()
            .expect_err("bad port");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
}
