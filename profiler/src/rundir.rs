//! The run directory: what one capture writes, read back through the same types that wrote it.
//!
//! `summary.json` is the index of a run. Its `schema_version` is checked before anything else:
//! a file without one is not a summary, and a newer version than this build knows is refused
//! rather than half read. Older versions read through serde defaults on fields added since.

use std::{
    fs::{self, File},
    io::{self, BufWriter, Write as _},
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::{
    load::LoadReport,
    report::{
        alloc::{self, LeakReport, MemorySample},
        findings,
        flamegraph::{self, Labels},
        folded, html,
        memory::{self, GrowthReport},
        profile::WeightedStack,
        sock::LatencyReport,
        summary::{SCHEMA_VERSION, Summary},
    },
};

/// The run's index.
pub const SUMMARY: &str = "summary.json";
/// The load driver's report written beside a capture (the release checklist does).
pub const LOAD: &str = "load.json";

/// Every report a capture may write. A directory holding any of them holds a run, which a new
/// capture must not be mixed into.
pub const REPORTS: &[&str] = &[
    SUMMARY,
    html::FILE,
    findings::FILE,
    "profile.pb.gz",
    "cpu.folded",
    "cpu.svg",
    "offcpu.folded",
    "offcpu.svg",
    "locks.txt",
    "locks.folded",
    "locks.svg",
    "alloc.folded",
    "alloc.svg",
    "leaks.txt",
    "leaks.json",
    alloc::MEMORY_CSV,
    memory::TEXT,
    memory::JSON,
    "memory.folded",
    "memory.svg",
    "latency.txt",
    "latency.json",
    "latency.hgrm",
    "latency.svg",
    "latency_timeseries.csv",
    "tail.txt",
    "tail.json",
    "tail.svg",
    "tail-vs-typical.svg",
];

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("{} has no {SUMMARY}: not a profiler output directory", dir.display())]
    NotARun { dir: PathBuf },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a valid {what}", path.display())]
    Parse {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} has no schema_version: not a profiler summary", path.display())]
    NoSchema { path: PathBuf },
    #[error(
        "{} has schema version {found}, newer than this profiler reads ({SCHEMA_VERSION}): \
         read it with a newer profiler",
        path.display()
    )]
    Newer { path: PathBuf, found: u32 },
}

/// One capture's output directory, read.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub dir: PathBuf,
    pub summary: Summary,
    /// The load driver's report, when the directory holds one: `load.json`, else the
    /// standard profile's `loadtest_standard_*.json`, else the first `loadtest_*.json`.
    pub load: Option<LoadReport>,
}

impl RunDir {
    pub fn open(dir: &Path) -> Result<Self, RunDirError> {
        let path = dir.join(SUMMARY);
        if !path.is_file() {
            return Err(RunDirError::NotARun { dir: dir.into() });
        }
        let summary = read_summary(&path)?;
        let load = load_report_path(dir)
            .map(|path| read_json(&path, "load report"))
            .transpose()?;
        Ok(Self {
            dir: dir.into(),
            summary,
            load,
        })
    }

    /// A file of the run.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `latency.json`, when the run captured `sock`.
    pub fn latency(&self) -> Result<Option<LatencyReport>, RunDirError> {
        self.optional("latency.json", "latency report")
    }

    /// `leaks.json`, when the run captured `alloc`.
    pub fn leaks(&self) -> Result<Option<LeakReport>, RunDirError> {
        self.optional("leaks.json", "leak report")
    }

    /// `growth.json`, when the run captured `memory`.
    pub fn growth(&self) -> Result<Option<GrowthReport>, RunDirError> {
        self.optional(memory::JSON, "growth report")
    }

    /// `memory_samples.csv`, when the run captured `alloc`: empty when it has none.
    pub fn memory_samples(&self) -> Result<Vec<MemorySample>, RunDirError> {
        match alloc::read_memory_csv(&self.dir) {
            Ok(samples) => Ok(samples),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(RunDirError::Read {
                path: self.file(alloc::MEMORY_CSV),
                source,
            }),
        }
    }

    fn optional<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        what: &'static str,
    ) -> Result<Option<T>, RunDirError> {
        let path = self.file(name);
        if !path.is_file() {
            return Ok(None);
        }
        read_json(&path, what).map(Some)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("could not write {}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Writes a capture's files into its directory, keeping the list of what it wrote (the
/// summary's `outputs`) and the terminal text that goes with them.
#[derive(Debug)]
pub struct RunWriter {
    dir: PathBuf,
    outputs: Vec<String>,
    terminal: String,
}

impl RunWriter {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            outputs: Vec::new(),
            terminal: String::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `name` through `body`, buffered.
    pub fn write(
        &mut self,
        name: &str,
        body: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
    ) -> Result<(), WriteError> {
        let path = self.dir.join(name);
        let fail = |source| WriteError {
            path: path.clone(),
            source,
        };
        let mut out = BufWriter::new(File::create(&path).map_err(fail)?);
        body(&mut out).map_err(fail)?;
        out.flush().map_err(fail)?;
        self.outputs.push(name.to_string());
        Ok(())
    }

    /// Writes `value` as pretty JSON to `name`.
    pub fn json(&mut self, name: &str, value: &impl serde::Serialize) -> Result<(), WriteError> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| WriteError {
            path: self.dir.join(name),
            source: io::Error::other(e),
        })?;
        self.write(name, |out| out.write_all(&bytes))
    }

    /// `<name>.folded` and `<name>.svg` of `stacks`.
    pub fn flamegraph(
        &mut self,
        name: &str,
        stacks: &[WeightedStack],
        labels: &Labels<'_>,
    ) -> Result<(), WriteError> {
        let lines = folded::fold(stacks);
        self.write(&format!("{name}.folded"), |out| {
            lines.iter().try_for_each(|line| writeln!(out, "{line}"))
        })?;
        self.write(&format!("{name}.svg"), |out| {
            flamegraph::write(&lines, labels, out)
        })
    }

    /// Adds a block of terminal text.
    pub fn say(&mut self, text: &str) {
        if !self.terminal.is_empty() {
            self.terminal.push('\n');
        }
        self.terminal.push_str(text);
    }

    /// Records a file written by other means.
    pub fn wrote(&mut self, name: &str) {
        self.outputs.push(name.to_string());
    }

    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }

    pub fn into_terminal(self) -> String {
        self.terminal
    }
}

/// Reads a summary, checking its schema version first.
pub fn read_summary(path: &Path) -> Result<Summary, RunDirError> {
    #[derive(Deserialize)]
    struct Version {
        schema_version: Option<u32>,
    }
    let text = read(path)?;
    let parse = |source| RunDirError::Parse {
        path: path.into(),
        what: SUMMARY,
        source,
    };
    let version: Version = serde_json::from_str(&text).map_err(parse)?;
    match version.schema_version {
        None => Err(RunDirError::NoSchema { path: path.into() }),
        Some(found) if found > SCHEMA_VERSION => Err(RunDirError::Newer {
            path: path.into(),
            found,
        }),
        Some(_) => serde_json::from_str(&text).map_err(parse),
    }
}

fn read(path: &Path) -> Result<String, RunDirError> {
    fs::read_to_string(path).map_err(|source| RunDirError::Read {
        path: path.into(),
        source,
    })
}

fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &'static str,
) -> Result<T, RunDirError> {
    serde_json::from_str(&read(path)?).map_err(|source| RunDirError::Parse {
        path: path.into(),
        what,
        source,
    })
}

fn load_report_path(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.path(), e.file_name().into_string().ok()?)))
        .filter(|(_, n)| n.starts_with("load") && n.ends_with(".json"))
        .min_by_key(|(_, n)| (n != LOAD, !n.starts_with("loadtest_standard"), n.clone()))
        .map(|(p, _)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_is_checked_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SUMMARY);
        fs::write(&path, "{}").unwrap();
        assert!(matches!(
            RunDir::open(dir.path()),
            Err(RunDirError::NoSchema { .. })
        ));
        fs::write(
            &path,
            format!("{{\"schema_version\": {}}}", SCHEMA_VERSION + 1),
        )
        .unwrap();
        let err = RunDir::open(dir.path()).unwrap_err();
        assert!(matches!(err, RunDirError::Newer { .. }), "{err}");
        // Required fields missing: a parse error naming the file, not a run full of zeros.
        fs::write(&path, "{\"schema_version\": 1}").unwrap();
        assert!(matches!(
            RunDir::open(dir.path()),
            Err(RunDirError::Parse { .. })
        ));
        let summary = Summary {
            schema_version: SCHEMA_VERSION,
            ..Summary::default()
        };
        fs::write(&path, serde_json::to_string(&summary).unwrap()).unwrap();
        let run = RunDir::open(dir.path()).unwrap();
        assert_eq!(run.summary.schema_version, SCHEMA_VERSION);
        assert!(run.load.is_none());
        assert!(matches!(
            RunDir::open(&dir.path().join("nope")),
            Err(RunDirError::NotARun { .. })
        ));
    }
}
