//! The command line, and every value on it checked before a connection is
//! opened.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::Parser;
use hyper::header::HeaderValue;
use hyper::Uri;

/// Most connections one run may open: each is a socket on both sides.
pub(crate) const MAX_CONNECTIONS: usize = 100_000;
/// Most load threads.
pub(crate) const MAX_THREADS: usize = 1024;
/// Longest measurement, warm-up or request timeout.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// An HTTP/1.1 load generator: N connections over M threads (each a
/// `current_thread` tokio runtime, optionally pinned), each connection one
/// request at a time, for a fixed duration. Prints one line of JSON:
/// requests/s, p50/p99/p99.9 latency and errors.
#[derive(Parser, Debug)]
#[command(name = "loadgen", version)]
pub(crate) struct Cli {
    /// Connections kept open (or, with --new-connection, requests in flight).
    #[arg(short = 'c', long, default_value = "64")]
    pub(crate) connections: usize,
    /// Load threads; the connections are shared out among them.
    #[arg(short = 't', long, default_value = "1")]
    pub(crate) threads: usize,
    /// How long to measure: `10s`, `500ms`, `1m` (a bare number is seconds).
    #[arg(short = 'd', long, default_value = "10s", value_parser = duration)]
    pub(crate) duration: Duration,
    /// Load before the measurement that is not counted (same form).
    #[arg(short = 'w', long, default_value = "0s", value_parser = duration)]
    pub(crate) warmup: Duration,
    /// A request (or a connect) taking longer counts as a timeout; the
    /// connection is then dropped and opened again.
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub(crate) timeout: Duration,
    /// Pin the load threads to these cores (`2,3` or `2-7`), thread i to
    /// the i-th listed (round robin). Default: not pinned.
    #[arg(long, value_parser = cores)]
    pub(crate) cores: Option<Cores>,
    /// A new connection per request (sent with `Connection: close`)
    /// instead of keep-alive.
    #[arg(long)]
    pub(crate) new_connection: bool,
    /// `http://host[:port][/path]`; every request is a `GET` of it.
    pub(crate) url: String,
}

/// The cores of `--cores`, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cores(pub(crate) Vec<usize>);

/// Where the requests go, resolved once.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    /// The `Host` header.
    pub(crate) host: HeaderValue,
    /// The request target (path and query).
    pub(crate) path: Uri,
}

/// A checked run.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) target: Target,
    pub(crate) url: String,
    pub(crate) connections: usize,
    pub(crate) threads: usize,
    pub(crate) duration: Duration,
    pub(crate) warmup: Duration,
    pub(crate) timeout: Duration,
    pub(crate) cores: Option<Vec<usize>>,
    pub(crate) new_connection: bool,
}

impl Cli {
    /// Checks the values that depend on one another or on the machine.
    pub(crate) fn check(self) -> Result<Config, String> {
        if self.connections == 0 || self.connections > MAX_CONNECTIONS {
            return Err(format!(
                "--connections must be 1 to {MAX_CONNECTIONS}, not {}",
                self.connections
            ));
        }
        if self.threads == 0 || self.threads > MAX_THREADS {
            return Err(format!(
                "--threads must be 1 to {MAX_THREADS}, not {}",
                self.threads
            ));
        }
        if self.threads > self.connections {
            return Err(format!(
                "--threads ({}) must not exceed --connections ({}): every thread needs a connection",
                self.threads, self.connections
            ));
        }
        if self.duration.is_zero() {
            return Err("--duration must be more than 0".into());
        }
        if self.timeout.is_zero() {
            return Err("--timeout must be more than 0".into());
        }
        let cores = self.cores.map(|c| c.0);
        if let Some(cores) = &cores {
            let allowed: Vec<usize> = core_affinity::get_core_ids()
                .unwrap_or_default()
                .into_iter()
                .map(|c| c.id)
                .collect();
            if let Some(bad) = cores.iter().find(|c| !allowed.contains(c)) {
                return Err(format!(
                    "--cores: core {bad} is not one this process may run on (allowed: {allowed:?})"
                ));
            }
        }
        let target = target(&self.url)?;
        Ok(Config {
            target,
            url: self.url,
            connections: self.connections,
            threads: self.threads,
            duration: self.duration,
            warmup: self.warmup,
            timeout: self.timeout,
            cores,
            new_connection: self.new_connection,
        })
    }
}

/// `10s`, `250ms`, `1m`, or a bare number of seconds; at most a day.
fn duration(text: &str) -> Result<Duration, String> {
    let value = match text.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(text)
            .map_err(|e| format!("not a duration ({e}); write e.g. 10s, 500ms or 1m"))?,
    };
    if value > MAX_DURATION {
        return Err(format!(
            "at most {}",
            humantime::format_duration(MAX_DURATION)
        ));
    }
    Ok(value)
}

/// `1,3,5` or `2-7` or both mixed; no repeats.
fn cores(text: &str) -> Result<Cores, String> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let number = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("{s:?} is not a core number"))
        };
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => (number(part)?, number(part)?),
        };
        if first > last {
            return Err(format!("{part:?}: a range goes upwards"));
        }
        if last - first >= MAX_THREADS {
            return Err(format!("{part:?}: more than {MAX_THREADS} cores"));
        }
        for core in first..=last {
            if out.contains(&core) {
                return Err(format!("core {core} is listed twice"));
            }
            out.push(core);
        }
    }
    Ok(Cores(out))
}

/// Checks and resolves `http://host[:port][/path]`.
fn target(url: &str) -> Result<Target, String> {
    let bad = |why: &str| format!("URL {url:?}: {why}; write e.g. http://127.0.0.1:8080/");
    let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(bad("https is not supported (plain HTTP/1.1 only)")),
        Some(other) => return Err(bad(&format!("scheme {other:?} is not http"))),
        None => return Err(bad("no scheme")),
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("user info is not supported"));
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match authority.port_u16() {
        Some(port) => port,
        None if authority.as_str() == host => 80,
        None => return Err(bad("the port must be a number from 1 to 65535")),
    };
    if port == 0 {
        return Err(bad("port 0"));
    }
    // `[::1]` in a URL, `::1` to the resolver.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addr = (bare, port)
        .to_socket_addrs()
        .map_err(|e| bad(&format!("cannot resolve {host}: {e}")))?
        .next()
        .ok_or_else(|| bad(&format!("{host} resolves to no address")))?;
    let host = HeaderValue::from_str(authority.as_str()).map_err(|e| bad(&format!("{e}")))?;
    let path: Uri = uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|e| bad(&format!("{e}")))?;
    Ok(Target { addr, host, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("1m").unwrap(), Duration::from_secs(60));
        assert!(duration("soon").is_err());
        assert!(duration("-1s").is_err());
        assert!(duration("2d").is_err());
        assert!(duration("99999999999999999999").is_err());
    }

    #[test]
    fn core_lists() {
        assert_eq!(cores("1").unwrap().0, vec![1]);
        assert_eq!(cores("0,2-4").unwrap().0, vec![0, 2, 3, 4]);
        assert!(cores("").is_err());
        assert!(cores("4-2").is_err());
        assert!(cores("1,1").is_err());
        assert!(cores("a").is_err());
        assert!(cores("0-99999999").is_err());
    }

    #[test]
    fn urls() {
        let t = target("http://127.0.0.1:8080/a?b=1").unwrap();
        assert_eq!(t.addr, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(t.host, "127.0.0.1:8080");
        assert_eq!(t.path, "/a?b=1");
        let t = target("http://127.0.0.1").unwrap();
        assert_eq!(t.addr.port(), 80);
        assert_eq!(t.path, "/");
        assert_eq!(
            target("http://[::1]:9/").unwrap().addr,
            "[::1]:9".parse().unwrap()
        );
        for garbage in [
            "not a url",
            "127.0.0.1:8080",
            "https://127.0.0.1/",
            "ftp://127.0.0.1/",
            "http:///path",
            "http://127.0.0.1:0/",
            "http://127.0.0.1:99999/",
            "http://127.0.0.1:/",
            "http://127.0.0.1:x/",
            "http://u@127.0.0.1/",
            "",
        ] {
            assert!(target(garbage).is_err(), "{garbage:?} accepted");
        }
    }
}
