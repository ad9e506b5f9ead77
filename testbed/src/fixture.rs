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

/// What a fixture is built from: its source and every header the fixtures share.
fn inputs(dir: &Path, source: &Path) -> Result<Vec<PathBuf>> {
    let mut inputs = vec![source.to_path_buf()];
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "h") {
            inputs.push(path);
        }
    }
    Ok(inputs)
}

/// Whether `output` is no older than any input and was built with `flags` (kept in `stamp`).
fn fresh(output: &Path, stamp: &Path, flags: &str, inputs: &[PathBuf]) -> bool {
    let Some(built) = mtime(output) else {
        return false;
    };
    inputs
        .iter()
        .all(|input| mtime(input).is_some_and(|changed| built >= changed))
        && fs::read_to_string(stamp).is_ok_and(|s| s == flags)
}

/// Compiles a C fixture (if its source, a shared header, or its flags changed) and returns the
/// executable's path.
pub fn build_c(build: &CBuild<'_>) -> Result<PathBuf> {
    let fixtures = workspace_root().join("testbed/fixtures");
    let source = fixtures.join(format!("{}.c", build.source));
    let dir = target_dir().join("fixtures");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let output = dir.join(build.output);
    let stamp = dir.join(format!("{}.flags", build.output));
    let flags = format!("{:?} {:?}", build.cflags, build.libs);
    if fresh(&output, &stamp, &flags, &inputs(&fixtures, &source)?) {
        return Ok(output);
    }
    let status = Command::new("gcc")
        .args(build.cflags)
        // For the shared `fixture.h`.
        .arg("-I")
        .arg(&fixtures)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_changed_header_or_flags_make_a_fixture_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let touch = |name: &str, at: SystemTime| {
            fs::File::create(path(name))
                .unwrap()
                .set_modified(at)
                .unwrap();
        };
        let t0 = SystemTime::now() - Duration::from_secs(60);
        touch("a.c", t0);
        touch("fixture.h", t0);
        touch("notes.txt", t0 + Duration::from_secs(30));
        touch("a", t0 + Duration::from_secs(10));
        fs::write(path("a.flags"), "[-O2]").unwrap();
        let inputs = inputs(dir.path(), &path("a.c")).unwrap();
        assert_eq!(inputs.len(), 2, "the source and the header: {inputs:?}");
        assert!(fresh(&path("a"), &path("a.flags"), "[-O2]", &inputs));
        assert!(!fresh(&path("a"), &path("a.flags"), "[-O0]", &inputs));
        assert!(!fresh(&path("b"), &path("a.flags"), "[-O2]", &inputs));

        touch("fixture.h", t0 + Duration::from_secs(20));
        assert!(!fresh(&path("a"), &path("a.flags"), "[-O2]", &inputs));
    }
}
