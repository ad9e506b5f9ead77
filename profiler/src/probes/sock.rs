//! `sock`: socket-to-reply and service time of the target's requests, per listening port, and
//! how long new connections wait to be picked up. Four tracepoints (`sock:sk_data_ready`,
//! `sock:sock_recv_length`, `sock:sock_send_length`, `sock:inet_sock_set_state`) drive a
//! per-socket state machine in the kernel (see `profiler_common::sock`); the histograms stay in
//! per-CPU arrays and are merged here.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{HashMap, PerCpuArray},
};
use profiler_common::{
    hist::Hist,
    sock::{self, MAX_PORTS, SockConfig, count_index, counter, hist_index, kind},
    stats,
};

use super::{
    Counters, Drain, Family, Finish, ProbeError, Setup, Tick, attach_tracepoint, map, map_mut,
};
use crate::{
    btf,
    ebpf::LoadConfig,
    report::findings::Finding,
    report::{
        hist::Merged,
        sock::{self as report, LatencyReport, PortData, Timeseries},
    },
    tracefs::Format,
};

const PROBE: &str = "sock";

#[derive(Debug, Clone, Default)]
pub struct Config {}

fn other(what: String) -> ProbeError {
    ProbeError::Other {
        probe: PROBE,
        source: std::io::Error::other(what.clone()),
        what,
    }
}

fn format(event: &str) -> Result<Format, ProbeError> {
    Format::load("sock", event).map_err(|e| super::tracefs_error(PROBE, &e))
}

fn offset(format: &Format, event: &str, field: &str, size: u32) -> Result<u32, ProbeError> {
    format
        .offset("sock", event, field, size)
        .map_err(|e| super::tracefs_error(PROBE, &e))
}

/// `sock_common.skc_num`'s offset in the running kernel, found once per process: parsing the
/// kernel's BTF was most of an attach's `configure` time (the agent re-attaches every
/// restarted target), and the running kernel's layout cannot change under us.
fn skc_num_offset() -> Result<u32, String> {
    static OFFSET: std::sync::OnceLock<Result<u32, String>> = std::sync::OnceLock::new();
    OFFSET
        .get_or_init(|| {
            btf::Btf::load(Path::new(btf::VMLINUX))
                .and_then(|b| b.field_offset("sock_common", "skc_num"))
                .map_err(|e| e.to_string())
        })
        .clone()
}

/// Field offsets from tracefs and the local-port offset from BTF.
pub fn kernel_config(_config: &Config) -> Result<SockConfig, ProbeError> {
    let ready = format("sk_data_ready")?;
    let recv = format("sock_recv_length")?;
    let send = format("sock_send_length")?;
    let state = format("inet_sock_set_state")?;
    let io = |f: &Format, event: &str| -> Result<[u32; 3], ProbeError> {
        Ok([
            offset(f, event, "sk", 8)?,
            offset(f, event, "protocol", 2)?,
            offset(f, event, "ret", 4)?,
        ])
    };
    let recv_fields = io(&recv, "sock_recv_length")?;
    // One program serves both: their records must agree.
    if io(&send, "sock_send_length")? != recv_fields {
        return Err(other(
            "sock_recv_length and sock_send_length have different layouts on this kernel".into(),
        ));
    }
    let skc_num = skc_num_offset().map_err(|e| {
        other(format!(
            "needs the kernel's BTF ({}) to find a socket's port: {e}",
            btf::VMLINUX
        ))
    })?;
    Ok(SockConfig {
        ready_sk: offset(&ready, "sk_data_ready", "skaddr", 8)?,
        ready_protocol: offset(&ready, "sk_data_ready", "protocol", 2)?,
        io_sk: recv_fields[0],
        io_protocol: recv_fields[1],
        io_ret: recv_fields[2],
        state_sk: offset(&state, "inet_sock_set_state", "skaddr", 8)?,
        state_old: offset(&state, "inet_sock_set_state", "oldstate", 4)?,
        state_new: offset(&state, "inet_sock_set_state", "newstate", 4)?,
        state_sport: offset(&state, "inet_sock_set_state", "sport", 2)?,
        state_protocol: offset(&state, "inet_sock_set_state", "protocol", 2)?,
        skc_num,
        _pad: 0,
    })
}

/// The programs on `sock:` tracepoints (the send syscalls' entry aside), in attach order.
const TRACEPOINTS: [(&str, &str); 4] = [
    (sock::STATE_PROGRAM, "inet_sock_set_state"),
    (sock::DATA_READY_PROGRAM, "sk_data_ready"),
    (sock::RECV_PROGRAM, "sock_recv_length"),
    (sock::SEND_PROGRAM, "sock_send_length"),
];

pub fn attach(ebpf: &mut Ebpf, _config: &Config) -> Result<(), ProbeError> {
    // The programs do nothing until all are attached and armed together.
    let enter: &mut aya::programs::TracePoint =
        super::program_mut(ebpf, PROBE, sock::SEND_ENTER_PROGRAM)?;
    super::load_once(enter, PROBE, sock::SEND_ENTER_PROGRAM)?;
    for syscall in sock::SEND_SYSCALLS {
        let event = format!("sys_enter_{syscall}");
        enter
            .attach("syscalls", &event)
            .map_err(|source| ProbeError::Attach {
                probe: PROBE,
                program: sock::SEND_ENTER_PROGRAM,
                target: format!("syscalls:{event}"),
                source: Box::new(source),
            })?;
    }
    for (program, event) in TRACEPOINTS {
        attach_tracepoint(ebpf, PROBE, program, "sock", event)?;
    }
    Ok(())
}

/// The TCP ports `pid` listens on: its socket inodes matched against the LISTEN rows of its
/// network namespace's `/proc/PID/net/tcp{,6}`.
pub fn listening_ports(pid: u32) -> std::io::Result<BTreeSet<u16>> {
    let mut inodes = BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(link) = std::fs::read_link(entry?.path()) else {
            continue; // closed meanwhile
        };
        if let Some(inode) = link
            .to_str()
            .and_then(|l| l.strip_prefix("socket:["))
            .and_then(|l| l.strip_suffix(']'))
            .and_then(|l| l.parse::<u64>().ok())
        {
            inodes.insert(inode);
        }
    }
    let mut ports = BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue; // no IPv6
        };
        ports.extend(parse_listeners(&text, &inodes));
    }
    Ok(ports)
}

/// LISTEN (state 0A) rows of a `/proc/net/tcp` table whose inode is in `inodes`.
fn parse_listeners(text: &str, inodes: &BTreeSet<u64>) -> Vec<u16> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (local, st, inode) = (cols.get(1)?, cols.get(3)?, cols.get(9)?);
            if *st != "0A" || !inodes.contains(&inode.parse().ok()?) {
                return None;
            }
            u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
        })
        .collect()
}

/// Ports handed to the kernel, and their indices in its arrays.
#[derive(Debug, Default)]
pub struct Ports {
    pub indices: BTreeMap<u16, u32>,
    /// Listening ports seen beyond [`MAX_PORTS`].
    pub untracked: BTreeSet<u16>,
}

impl Ports {
    /// Adds the target's current listening ports to `SOCK_PORTS`. Ports stay once added, so a
    /// closed listener's accepted connections still count.
    pub fn sync(&mut self, ebpf: &mut Ebpf, pid: u32) -> Result<(), ProbeError> {
        let listening = listening_ports(pid).map_err(|source| ProbeError::Other {
            probe: PROBE,
            what: format!("reading the sockets of pid {pid}"),
            source,
        })?;
        let new: Vec<u16> = listening
            .into_iter()
            .filter(|p| !self.indices.contains_key(p) && !self.untracked.contains(p))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let mut ports: HashMap<_, u16, u32> = map_mut(ebpf, PROBE, sock::PORTS_MAP)?;
        for port in new {
            let index = self.indices.len() as u32;
            if index >= MAX_PORTS {
                self.untracked.insert(port);
                continue;
            }
            ports
                .insert(port, index, 0)
                .map_err(|source| ProbeError::Map {
                    probe: PROBE,
                    map: sock::PORTS_MAP,
                    source: Box::new(source),
                })?;
            self.indices.insert(port, index);
        }
        Ok(())
    }
}

/// Every tracked port's histograms and counters, summed over CPUs.
pub fn read(ebpf: &Ebpf, ports: &Ports) -> Result<Vec<PortData>, ProbeError> {
    let hists: PerCpuArray<_, Hist> = map(ebpf, PROBE, sock::HISTS_MAP)?;
    let counts: PerCpuArray<_, u64> = map(ebpf, PROBE, sock::COUNTS_MAP)?;
    let fail = |map: &'static str| {
        move |source| ProbeError::Map {
            probe: PROBE,
            map,
            source: Box::new(source),
        }
    };
    let merged = |index: u32| -> Result<Merged, ProbeError> {
        let mut merged = Merged::default();
        for hist in hists.get(&index, 0).map_err(fail(sock::HISTS_MAP))?.iter() {
            merged.add(hist);
        }
        Ok(merged)
    };
    let per_cpu = |index: u32| -> Result<Vec<u64>, ProbeError> {
        Ok(counts
            .get(&index, 0)
            .map_err(fail(sock::COUNTS_MAP))?
            .iter()
            .copied()
            .collect())
    };
    let summed = |index: u32| -> Result<u64, ProbeError> { Ok(per_cpu(index)?.iter().sum()) };
    // Each CPU keeps its own first and last reply: the earliest first, the latest last.
    let span = |i: u32| -> Result<Option<(u64, u64)>, ProbeError> {
        let first = per_cpu(count_index(i, counter::FIRST_REPLY_NS))?
            .into_iter()
            .filter(|&ns| ns != 0)
            .min();
        let last = per_cpu(count_index(i, counter::LAST_REPLY_NS))?
            .into_iter()
            .max();
        Ok(first.zip(last))
    };
    ports
        .indices
        .iter()
        .map(|(&port, &i)| {
            Ok(PortData {
                port,
                socket_to_reply: merged(hist_index(i, kind::SOCKET_TO_REPLY))?,
                service: merged(hist_index(i, kind::SERVICE))?,
                new_connection: merged(hist_index(i, kind::NEW_CONNECTION))?,
                first_request: merged(hist_index(i, kind::FIRST_REQUEST))?,
                pushes: summed(count_index(i, counter::PUSHES))?,
                unseen: summed(count_index(i, counter::UNSEEN))?,
                replies_between: span(i)?,
            })
        })
        .collect()
}

/// How often the target's listening ports are re-read: a scan of every open fd, so less often
/// than the capture loop ticks.
const PORTS_REFRESH: Duration = Duration::from_secs(2);

/// The `sock` family: socket-to-reply and service latency per listening port.
pub struct Sock {
    config: Config,
    ports: Ports,
    last_ports: Instant,
    /// Latency percentiles per interval.
    series: Timeseries,
}

impl Sock {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            ports: Ports::default(),
            last_ports: Instant::now(),
            series: Timeseries::default(),
        }
    }

    /// Percentiles of the interval that just ended.
    fn snapshot(&mut self, tick: &Tick<'_>) {
        match read(tick.ebpf, &self.ports) {
            Ok(ports) => self.series.record(tick.elapsed.as_secs_f64(), &ports),
            Err(err) => log::warn!("latency snapshot: {err}"),
        }
    }
}

impl Family for Sock {
    fn name(&self) -> &'static str {
        PROBE
    }

    fn programs(&self) -> Vec<&'static str> {
        std::iter::once(sock::SEND_ENTER_PROGRAM)
            .chain(TRACEPOINTS.iter().map(|(program, _)| *program))
            .collect()
    }

    /// Nothing it records has a stack: a capture of `sock` alone builds no unwinding tables.
    fn walks_stacks(&self) -> bool {
        false
    }

    fn configure(&mut self, _: &Setup<'_>, load: &mut LoadConfig) -> Result<(), ProbeError> {
        load.global(sock::CONFIG_GLOBAL, &kernel_config(&self.config)?);
        Ok(())
    }

    fn attach(&mut self, ebpf: &mut Ebpf, setup: &Setup<'_>) -> Result<(), ProbeError> {
        // Ports first, so the first connections after arming are already known.
        self.ports.sync(ebpf, setup.pid)?;
        attach(ebpf, &self.config)?;
        self.last_ports = Instant::now();
        Ok(())
    }

    fn arm(&mut self, ebpf: &mut Ebpf, on: bool) -> Result<(), ProbeError> {
        super::set_armed(ebpf, PROBE, sock::ARMED_MAP, on)
    }

    fn begin(&mut self, tick: &mut Tick<'_>) {
        if self.ports.indices.is_empty() {
            tick.notes.push(format!(
                "sock: pid {} listens on no TCP port yet; ports it opens later are picked up",
                tick.pid
            ));
        }
    }

    fn tick(&mut self, tick: &mut Tick<'_>) {
        if self.last_ports.elapsed() >= PORTS_REFRESH {
            self.last_ports = Instant::now();
            if let Err(err) = self.ports.sync(tick.ebpf, tick.pid) {
                log::debug!("refreshing listening ports: {err}");
            }
        }
        if tick.interval_due {
            self.snapshot(tick);
        }
    }

    /// The last, partial interval.
    fn end(&mut self, tick: &mut Tick<'_>) {
        self.snapshot(tick);
    }

    fn progress(&self, counters: &Counters) -> String {
        format!("{} requests", counters.get(stats::SOCK_REQUESTS))
    }

    /// The per-port arrays are fixed in size: read whole, cumulative since attach. New
    /// listening ports are picked up here as in `tick`.
    fn drain(&mut self, d: &mut Drain<'_>) -> Result<bool, ProbeError> {
        if self.last_ports.elapsed() >= PORTS_REFRESH {
            self.last_ports = Instant::now();
            if let Err(err) = self.ports.sync(d.ebpf, d.pid) {
                log::debug!("refreshing listening ports: {err}");
            }
        }
        d.into.ports = read(d.ebpf, &self.ports)?;
        Ok(true)
    }

    fn finish(&mut self, f: &mut Finish<'_>) -> Result<(), ProbeError> {
        let data = read(f.ebpf, &self.ports)?;
        let latency = LatencyReport::new(
            &data,
            f.duration.as_secs_f64(),
            self.ports.untracked.iter().copied().collect(),
        );
        let text = report::text(&latency);
        f.writer
            .write("latency.txt", |out| out.write_all(text.as_bytes()))?;
        f.writer.json("latency.json", &latency)?;
        // The distribution of every tracked port together; with one port, that port's.
        let mut all = Merged::default();
        for port in &data {
            all.add_merged(&port.socket_to_reply);
        }
        f.writer
            .write("latency.hgrm", |out| report::hgrm(&all, out))?;
        let svg = report::spectrum_svg(&data, &f.title("socket-to-reply latency"));
        f.writer
            .write("latency.svg", |out| out.write_all(svg.as_bytes()))?;
        let series = &self.series;
        f.writer
            .write("latency_timeseries.csv", |out| series.write(out))?;
        f.writer.say(&format!(
            "latency (µs, per listening port):\n{}",
            text.trim_end()
        ));
        for p in latency.ports.iter().filter(|p| p.requests >= 10) {
            let s = &p.socket_to_reply;
            f.outcome.findings.push(Finding {
                family: PROBE.into(),
                subject: format!("latency :{}", p.port),
                // A tail ten times the median is worth explaining; else only a figure.
                impact: if s.p99_us >= 10.0 * s.p50_us {
                    0.35
                } else {
                    0.05
                },
                what: format!(
                    "p99 {} on :{} (p50 {}, {:.0} requests/s): add --why for what makes it",
                    report::duration(s.p99_us),
                    p.port,
                    report::duration(s.p50_us),
                    s.rate_per_s
                ),
                file: "latency.txt".into(),
            });
        }
        f.summary().sock = Some(latency);
        f.outcome.latency = Some(data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_are_matched_by_inode_and_state() {
        // Rows from this machine's /proc/net/tcp: a listener on 3333 (inode 111), an
        // established connection from it (inode 112), a listener of another process (inode 9).
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0D05 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0D05 0100007F:A1B2 01 00000000:00000000 00:00000000 00000000     0        0 112 1 0000000000000000 20 4 30 10 -1
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 9 1 0000000000000000 100 0 0 10 0
";
        let inodes = BTreeSet::from([111, 112]);
        assert_eq!(parse_listeners(text, &inodes), vec![3333]);
        assert!(parse_listeners(text, &BTreeSet::new()).is_empty());
    }

    /// A socket this process listens on is found, and one it does not hold is not.
    #[test]
    fn finds_own_listening_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let ports = listening_ports(std::process::id()).unwrap();
        assert!(ports.contains(&port), "{port} not in {ports:?}");
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let ephemeral = client.local_addr().unwrap().port();
        assert!(
            !listening_ports(std::process::id())
                .unwrap()
                .contains(&ephemeral)
        );
    }
}
