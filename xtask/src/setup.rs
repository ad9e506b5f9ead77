//! Everything a fresh machine needs, done idempotently: each step checks first and does nothing
//! when it is already done, so `test` and `demo` can run it every time.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::util;

/// Debian packages the tests and benchmarks use: gcc for the fixtures, bpftool, bpftrace and
/// perf to compare with, glibc's own symbols (libc.so.6 ships only .dynsym, so without them
/// frames read `libc.so.6+0x…`), and jemalloc for the allocation tests.
const APT_PACKAGES: &[&str] = &[
    "gcc",
    "libc6-dev",
    "libc6-dbg",
    "libjemalloc-dev",
    "bpftool",
    "bpftrace",
    "linux-perf",
    // The agent's tests: a real Prometheus scrapes it, `go tool pprof` reads its profiles.
    "prometheus",
    "golang-go",
    // report.html is checked in a headless browser.
    "chromium",
    // `bench memory` measures real servers under their own load tools.
    "memcached",
    "libmemcached-tools",
    "redis-server",
    "redis-tools",
];

/// The bpf-linker release known to build against the machine's nightly LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> anyhow::Result<()> {
    nightly_rust_src()?;
    bpf_linker()?;
    apt_packages()?;
    Ok(())
}

fn nightly_rust_src() -> anyhow::Result<()> {
    let toolchains = util::output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to build the eBPF programs")?;
    if !String::from_utf8_lossy(&toolchains.stdout)
        .lines()
        .any(|l| l.starts_with("nightly"))
    {
        eprintln!("setup: installing the nightly toolchain");
        util::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let installed = util::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        eprintln!("setup: adding rust-src to nightly");
        util::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// The nightly's own libLLVM, e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`.
fn nightly_llvm() -> anyhow::Result<PathBuf> {
    let sysroot = util::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim()).join("lib");
    fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        })
        .with_context(|| format!("no libLLVM.so.*-rust-* in {}", lib.display()))
}

/// "libLLVM.so.22.1-rust-…" → 22.
fn llvm_major(lib: &Path) -> anyhow::Result<u32> {
    let name = lib.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    name.strip_prefix("libLLVM.so.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|major| major.parse().ok())
        .with_context(|| format!("cannot read the LLVM version from {name}"))
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

/// bpf-linker built against the nightly's libLLVM. `LLVM_PREFIX` points its build at a
/// directory whose lib/ holds that library under the names the build and the loader look for.
fn bpf_linker() -> anyhow::Result<()> {
    let llvm = nightly_llvm()?;
    let major = llvm_major(&llvm)?;
    let prefix = home().join(".local/share/profiler/llvm");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib)?;
    let soname = llvm.file_name().context("libLLVM has a name")?;
    for link in [lib.join("libLLVM.so"), lib.join(soname)] {
        if fs::read_link(&link).ok().as_deref() != Some(llvm.as_path()) {
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(&llvm, &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
    }
    // The stamp names the libLLVM the installed bpf-linker was built against.
    let stamp = prefix.join("bpf-linker.built-for");
    let want = format!("{BPF_LINKER_VERSION} {}", llvm.display());
    let works = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if works && fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} (about 75 s)");
    util::run(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix),
    )?;
    let check = Command::new("bpf-linker").arg("--version").output();
    if !check.is_ok_and(|o| o.status.success()) {
        bail!("bpf-linker was installed but does not run; is ~/.cargo/bin on PATH?");
    }
    fs::write(&stamp, want)?;
    Ok(())
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", pkg])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    util::run(util::privileged("apt-get").arg("update").arg("-q"))?;
    util::run(
        util::privileged("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_soname() {
        let lib = Path::new("/x/lib/libLLVM.so.22.1-rust-1.97.0-nightly");
        assert_eq!(llvm_major(lib).unwrap(), 22);
        assert!(llvm_major(Path::new("/x/libLLVM-22.so")).is_err());
    }
}
