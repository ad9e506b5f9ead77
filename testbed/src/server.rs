//! A testbed server started by a test, a benchmark or the demo: built in release mode, listening
//! on a free loopback port, ready once it prints its startup line, and stopped by pid.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::{Command, ExitStatus},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{fixture::testbed_bin, process::ChildGuard};

/// How long a freshly built server may take to print its startup line.
const STARTUP: Duration = Duration::from_secs(60);

/// A running `testbed-pool` or `testbed-ledger`.
pub struct Server {
    child: ChildGuard,
    name: String,
    /// Where it listens (the actual port, when started on port 0).
    pub addr: SocketAddr,
    /// Its startup line, which names the knobs in force.
    pub banner: String,
}

/// What a server printed when it stopped: its `key=value` tallies, and every line after its
/// startup line (statistics, refusals).
#[derive(Debug, Clone)]
pub struct Stopped {
    pub status: ExitStatus,
    pub tallies: BTreeMap<String, String>,
    pub lines: Vec<String>,
}

impl Stopped {
    /// A numeric tally, e.g. `accepted`, `entries`, `leaked_bytes`.
    pub fn count(&self, key: &str) -> Result<u64> {
        self.tallies
            .get(key)
            .with_context(|| format!("no {key}= in {:?}", self.tallies))?
            .parse()
            .with_context(|| format!("{key}= is not a number"))
    }
}

impl Server {
    /// Starts `name` (`testbed-pool` or `testbed-ledger`) with `args`, on 127.0.0.1 port 0
    /// unless `args` has a `--listen`, with no periodic statistics unless `args` asks.
    pub fn start(name: &str, args: &[&str]) -> Result<Self> {
        let bin = testbed_bin(name)?;
        let mut cmd = Command::new(bin);
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        if !args.contains(&"--stats-every") {
            cmd.args(["--stats-every", "0"]);
        }
        cmd.args(args);
        let mut child = ChildGuard::spawn(&mut cmd)?;
        let banner = child.wait_for_line("listening on", STARTUP)?;
        let addr = banner
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.parse().ok())
            .with_context(|| format!("no address in {banner:?}"))?;
        Ok(Self {
            child,
            name: name.to_string(),
            addr,
            banner,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Sends `signal` by pid, e.g. SIGSTOP and SIGCONT to stall it.
    pub fn signal(&self, signal: i32) -> Result<()> {
        self.child.signal(signal)
    }

    /// Stops it with SIGINT and returns the tallies it printed on the way out.
    pub fn stop(self) -> Result<Stopped> {
        self.child.signal(libc::SIGINT)?;
        let (status, lines) = self.child.wait(Duration::from_secs(10))?;
        let needle = format!("{} stopped: ", self.name);
        let Some(line) = lines.iter().rev().find(|l| l.starts_with(&needle)) else {
            bail!(
                "{} printed no {needle:?} line; it printed {lines:?}",
                self.name
            );
        };
        let tallies = parse_tallies(&line[needle.len()..]);
        Ok(Stopped {
            status,
            tallies,
            lines,
        })
    }
}

/// `a=1 b=x` into a map.
pub fn parse_tallies(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_parse() {
        let tallies = parse_tallies("connections=0 accepted=37 reasons=low-difficulty:37 (4.2/s)");
        assert_eq!(tallies["accepted"], "37");
        assert_eq!(tallies["reasons"], "low-difficulty:37");
        assert!(!tallies.contains_key("(4.2/s)"));
    }
}
