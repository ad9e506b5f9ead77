//! Builds the C fixtures in `testbed/fixtures/` with gcc, and the testbed's own binaries with
//! cargo, so tests and benchmarks always run what the source says.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::SystemTime,
};

use anyhow::{Context, Result, bail};

/// How a C fixture is compiled.
#[derive(Debug, Clone, Copy)]
pub struct CBuild<'a> {
    /// File name under `testbed/fixtures/`, without `.c`.
    pub source: &'a str,
    /// Name of the executable; several builds of one source need distinct names.
    pub output: &'a str,
    pub cflags: &'a [&'a str],
    pub libs: &'a [&'a str],
}

/// Flags for a fixture whose stacks must be walkable with frame pointers.
pub const FRAME_POINTERS: &[&str] = &[
    "-O2",
    "-g",
    "-fno-omit-frame-pointer",
    "-mno-omit-leaf-frame-pointer",
    "-fno-inline",
];

/// Flags for a fixture built the way distributions build: no frame pointers.
pub const NO_FRAME_POINTERS: &[&str] = &["-O2", "-g", "-fomit-frame-pointer", "-fno-inline"];

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn mtime(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Compiles a C fixture (if its source or flags changed) and returns the executable's path.
pub fn build_c(build: &CBuild<'_>) -> Result<PathBuf> {
    let source = workspace_root()
        .join("testbed/fixtures")
        .join(format!("{}.c", build.source));
    let dir = target_dir().join("fixtures");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let output = dir.join(build.output);
    let stamp = dir.join(format!("{}.flags", build.output));
    let flags = format!("{:?} {:?}", build.cflags, build.libs);
    let fresh = matches!((mtime(&source), mtime(&output)), (Some(s), Some(o)) if o >= s)
        && fs::read_to_string(&stamp).is_ok_and(|s| s == flags);
    if fresh {
        return Ok(output);
    }
    let status = Command::new("gcc")
        .args(build.cflags)
        .arg("-o")
        .arg(&output)
        .arg(&source)
        .args(["-lpthread"])
        .args(build.libs)
        .status()
        .context("running gcc (install it with `cargo xtask setup`)")?;
    if !status.success() {
        bail!("gcc failed to build {}: {status}", source.display());
    }
    fs::write(&stamp, flags)?;
    Ok(output)
}

/// Builds one of this crate's binaries in release mode and returns its path.
pub fn testbed_bin(name: &str) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--release",
            "--package",
            "testbed",
            "--bin",
            name,
        ])
        .arg("--manifest-path")
        .arg(workspace_root().join("Cargo.toml"))
        .status()
        .context("running cargo build for the testbed")?;
    if !status.success() {
        bail!("cargo build --bin {name} failed: {status}");
    }
    Ok(target_dir().join("release").join(name))
}
