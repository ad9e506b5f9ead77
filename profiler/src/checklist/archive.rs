//! A release's archive, `RESULTS/RELEASE/`: its marker `release.json`, which later releases
//! read to find the one to compare with, and the timestamp in every name it holds.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{args::Previous, server::Ended};
use crate::rundir;

/// The marker file.
pub const MARKER: &str = "release.json";

/// Bumped when a field changes meaning or goes away; older markers still read (their missing
/// fields take defaults), newer ones are refused. 2: `target` names any server (the testbed's
/// name as before, else the started program's path or the running process's executable);
/// `url`, `server` and `steps` added.
pub const SCHEMA_VERSION: u32 = 2;

/// The archive's marker, `release.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Archive {
    pub schema_version: u32,
    pub release: String,
    /// The server's identity: only archives of the same server are compared.
    pub target: String,
    /// The testbed's extra arguments.
    pub target_args: String,
    /// What was loaded (2).
    pub url: Option<String>,
    /// How the server was run (2).
    pub server: Option<ServerInfo>,
    /// The run's timestamp, in every file name it wrote.
    pub stamp: String,
    /// UTC, `YYYY-MM-DDTHH:MM:SSZ`: the newest archive is the previous release.
    pub finished_at: String,
    pub passed: bool,
    /// The comparison found a regression (2).
    pub regression: bool,
    /// Names inside the archive directory.
    pub smoke: Option<String>,
    pub standard: Option<String>,
    pub stress: Option<String>,
    pub soak: Option<String>,
    pub compare: Option<String>,
    /// The release compared with, and where its archive was.
    pub previous: Option<String>,
    pub previous_dir: Option<PathBuf>,
    /// Every server process the checklist started (or, with --pid, the one it used), all
    /// stopped before the checklist printed (the one it used still running).
    pub target_pids: Vec<u32>,
    /// Each step's server (2).
    pub steps: Vec<StepServer>,
}

/// How the server was run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerInfo {
    /// `testbed`, `start` (started afresh for every step) or `pid` (already running, never
    /// restarted: the steps ran one after another against the same process).
    pub mode: String,
    /// The command started, for `testbed` and `start`.
    pub command: Option<String>,
    /// The running process, for `pid`.
    pub pid: Option<u32>,
    pub exe: Option<String>,
    /// In words, for whoever reads the archive.
    pub note: String,
}

/// A step's server: the process started for it (with where its output went and how it was
/// stopped), or the running one it used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StepServer {
    pub step: String,
    /// The process loaded and profiled.
    pub pid: Option<u32>,
    /// Its stdout and stderr, names inside the archive.
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    /// How it ended: see [`Ended`]; `None` for a server that was not ours to stop.
    pub ended: Option<Ended>,
    /// Why it did not serve the step, if it did not.
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a release archive's marker", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{} has schema version {found}, newer than this profiler reads ({SCHEMA_VERSION}): \
         use a newer profiler",
        path.display()
    )]
    Newer { path: PathBuf, found: u32 },
    #[error(
        "--previous {name} is not a release archive (a release name under {} or an archive's \
         path)",
        results.display()
    )]
    NoPrevious {
        name: String,
        results: PathBuf,
        #[source]
        source: Box<ArchiveError>,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The UTC timestamp in every name a run writes.
pub fn stamp(now: jiff::Timestamp) -> String {
    now.strftime("%Y%m%dT%H%M%SZ").to_string()
}

pub fn read(dir: &Path) -> Result<Archive, ArchiveError> {
    let path = dir.join(MARKER);
    let text = fs::read_to_string(&path).map_err(|source| ArchiveError::Read {
        path: path.clone(),
        source,
    })?;
    let archive: Archive = serde_json::from_str(&text).map_err(|source| ArchiveError::Parse {
        path: path.clone(),
        source,
    })?;
    if archive.schema_version > SCHEMA_VERSION {
        return Err(ArchiveError::Newer {
            path,
            found: archive.schema_version,
        });
    }
    Ok(archive)
}

pub fn write(path: &Path, contents: &[u8]) -> Result<(), ArchiveError> {
    fs::write(path, contents).map_err(|source| ArchiveError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The release to compare with, and its archive directory: the one chosen, or else the newest
/// other archive of the same server with a standard capture.
pub fn find_previous(
    results: &Path,
    release: &str,
    target: &str,
    chosen: &Previous,
) -> Result<Option<(Archive, PathBuf)>, ArchiveError> {
    match chosen {
        Previous::Skip => return Ok(None),
        Previous::Named(name) => {
            let dir = if results.join(name).join(MARKER).is_file() {
                results.join(name)
            } else {
                PathBuf::from(name)
            };
            let archive = read(&dir).map_err(|source| ArchiveError::NoPrevious {
                name: name.clone(),
                results: results.to_path_buf(),
                source: Box::new(source),
            })?;
            return Ok(Some((archive, dir)));
        }
        Previous::Newest => {}
    }
    let Ok(entries) = fs::read_dir(results) else {
        return Ok(None);
    };
    let newest = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|dir| dir.file_name().and_then(|n| n.to_str()) != Some(release))
        .filter_map(|dir| Some((read(&dir).ok()?, dir)))
        // Only an archive with a standard capture of the same server can be compared with.
        .filter(|(a, dir)| {
            a.target == target
                && a.standard
                    .as_ref()
                    .is_some_and(|s| dir.join(s).join(rundir::SUMMARY).is_file())
        })
        .max_by(|(a, _), (b, _)| (&a.finished_at, &a.release).cmp(&(&b.finished_at, &b.release)));
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_release_is_the_newest_other_archive_of_the_server_with_a_capture() {
        const POOL: &str = "testbed-pool";
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let archive = |release: &str, target: &str, finished: &str, capture: bool| {
            let dir = root.join(release);
            fs::create_dir_all(dir.join("standard-x")).unwrap();
            if capture {
                fs::write(dir.join("standard-x/summary.json"), "{}").unwrap();
            }
            let marker = Archive {
                schema_version: SCHEMA_VERSION,
                release: release.into(),
                target: target.into(),
                finished_at: finished.into(),
                standard: Some("standard-x".into()),
                ..Archive::default()
            };
            fs::write(dir.join(MARKER), serde_json::to_string(&marker).unwrap()).unwrap();
        };
        archive("v0.1.0", POOL, "2026-12-01T10:00:00Z", true);
        archive("v0.1.1", POOL, "2026-12-01T11:00:00Z", true);
        archive("v0.1.2", POOL, "2026-12-01T12:00:00Z", false);
        archive("ledger-v1", "testbed-ledger", "2026-12-01T13:00:00Z", true);
        archive(
            "theirs-v2",
            "/usr/local/bin/pool",
            "2026-12-01T14:00:00Z",
            true,
        );
        fs::create_dir_all(root.join("demo-20261201T090000Z")).unwrap();
        let name = |found: Option<(Archive, PathBuf)>| found.map(|(a, _)| a.release);
        let find = |release: &str, target: &str, chosen: Previous| {
            name(find_previous(root, release, target, &chosen).unwrap())
        };
        assert_eq!(
            find("v0.2.0", POOL, Previous::Newest).as_deref(),
            Some("v0.1.1")
        );
        // Re-running a release compares with the one before it, not itself.
        assert_eq!(
            find("v0.1.1", POOL, Previous::Newest).as_deref(),
            Some("v0.1.0")
        );
        assert_eq!(
            find("v0.2.0", POOL, Previous::Named("v0.1.0".into())).as_deref(),
            Some("v0.1.0")
        );
        assert_eq!(find("v0.2.0", POOL, Previous::Skip), None);
        assert_eq!(
            find("theirs-v3", "/usr/local/bin/pool", Previous::Newest).as_deref(),
            Some("theirs-v2")
        );
        assert_eq!(find("v3", "/opt/other/pool", Previous::Newest), None);
        let err = find_previous(root, "v0.2.0", POOL, &Previous::Named("v9".into()));
        assert!(matches!(err, Err(ArchiveError::NoPrevious { .. })));
        assert!(
            find_previous(&root.join("absent"), "v0.2.0", POOL, &Previous::Newest)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_first_schema_marker_still_reads_and_a_newer_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // As the xtask checklist wrote them.
        let v1 = r#"{"schema_version": 1, "release": "v0.1.0", "target": "testbed-pool",
            "target_args": "", "stamp": "20261201T100000Z", "finished_at": "2026-12-01T10:05:00Z",
            "passed": true, "smoke": "smoke-20261201T100000Z.json",
            "standard": "standard-20261201T100000Z", "stress": null, "soak": null,
            "compare": null, "previous": null, "previous_dir": null, "target_pids": [1, 2]}"#;
        fs::write(dir.path().join(MARKER), v1).unwrap();
        let old = read(dir.path()).unwrap();
        assert_eq!(old.target, "testbed-pool");
        assert_eq!(old.standard.as_deref(), Some("standard-20261201T100000Z"));
        assert!(old.server.is_none() && old.steps.is_empty());
        fs::write(
            dir.path().join(MARKER),
            format!("{{\"schema_version\": {}}}", SCHEMA_VERSION + 1),
        )
        .unwrap();
        assert!(matches!(read(dir.path()), Err(ArchiveError::Newer { .. })));
    }
}
