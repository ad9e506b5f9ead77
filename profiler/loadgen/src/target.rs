//! What `profiler load` drives: `stratum://host:port` or `http://host:port/path`.

use std::{fmt, str::FromStr};

/// A load target, parsed from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A stratum v1 pool: miners subscribe, authorize and submit shares.
    Stratum { host: String, port: u16 },
    /// An HTTP/1.1 server: requests to `path` over keep-alive connections.
    Http {
        host: String,
        port: u16,
        /// Path and query, starting with `/`.
        path: String,
    },
}

impl Target {
    pub fn host(&self) -> &str {
        match self {
            Self::Stratum { host, .. } | Self::Http { host, .. } => host,
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            Self::Stratum { port, .. } | Self::Http { port, .. } => *port,
        }
    }

    /// `stratum` or `http`.
    pub fn protocol(&self) -> &'static str {
        match self {
            Self::Stratum { .. } => "stratum",
            Self::Http { .. } => "http",
        }
    }

    /// `host:port`, as `connect` and the HTTP `Host` header want it.
    pub fn authority(&self) -> String {
        if self.host().contains(':') {
            format!("[{}]:{}", self.host(), self.port())
        } else {
            format!("{}:{}", self.host(), self.port())
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stratum { .. } => write!(f, "stratum://{}", self.authority()),
            Self::Http { path, .. } => write!(f, "http://{}{path}", self.authority()),
        }
    }
}

/// Why a target URL was refused; the message shows the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad target {input:?}: {reason} (use stratum://host:port or http://host:port/path)")]
pub struct TargetError {
    pub input: String,
    pub reason: String,
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason: &str| TargetError {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = input.split_once("://").ok_or_else(|| fail("no scheme"))?;
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, ""),
        };
        let (host, port) = split_host_port(authority).map_err(|why| fail(&why))?;
        match scheme.to_ascii_lowercase().as_str() {
            "stratum" | "stratum+tcp" => {
                if !path.is_empty() && path != "/" {
                    return Err(fail("a stratum target has no path"));
                }
                Ok(Self::Stratum {
                    host,
                    port: port.ok_or_else(|| fail("a stratum target needs a port"))?,
                })
            }
            "http" => Ok(Self::Http {
                host,
                port: port.unwrap_or(80),
                path: if path.is_empty() { "/" } else { path }.to_string(),
            }),
            "https" => Err(fail("https is not supported; drive the plain-HTTP port")),
            other => Err(fail(&format!("unknown scheme {other:?}"))),
        }
    }
}

/// Splits `host:port`, `[v6]:port` or a bare host.
fn split_host_port(authority: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "unclosed [".to_string())?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(format!("unexpected {after:?} after ]")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no host".to_string());
    }
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("bad port {p:?}"))
        })
        .transpose()?;
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_kinds() {
        assert_eq!(
            "stratum://127.0.0.1:3333".parse(),
            Ok(Target::Stratum {
                host: "127.0.0.1".into(),
                port: 3333
            })
        );
        assert_eq!(
            "http://localhost:8080/ingest?x=1".parse(),
            Ok(Target::Http {
                host: "localhost".into(),
                port: 8080,
                path: "/ingest?x=1".into()
            })
        );
        let bare: Target = "http://example".parse().unwrap();
        assert_eq!(bare.port(), 80);
        assert_eq!(bare.to_string(), "http://example:80/");
        let v6: Target = "stratum+tcp://[::1]:3333".parse().unwrap();
        assert_eq!(v6.host(), "::1");
        assert_eq!(v6.to_string(), "stratum://[::1]:3333");
    }

    #[test]
    fn refuses_what_it_cannot_drive() {
        for bad in [
            "127.0.0.1:3333",
            "stratum://127.0.0.1",
            "stratum://127.0.0.1:3333/path",
            "stratum://:3333",
            "stratum://host:0",
            "stratum://host:99999",
            "https://host/",
            "ftp://host:21",
            "http://[::1/",
        ] {
            let err = bad.parse::<Target>().unwrap_err();
            assert!(err.to_string().contains("use stratum://"), "{bad}: {err}");
        }
    }
}
