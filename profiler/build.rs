//! Builds `profiler-ebpf` for the BPF target (nightly + bpf-linker, set up by `cargo xtask setup`)
//! and leaves the object in OUT_DIR, where `src/ebpf.rs` embeds it in the binary.

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "profiler-ebpf")
        .ok_or_else(|| anyhow!("profiler-ebpf package not found"))?;
    let cargo_metadata::Package {
        name,
        manifest_path,
        ..
    } = ebpf_package;
    let root_dir = manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {manifest_path}"))?;
    // Without bpf-linker the nested build fails with a wall of linker noise; say what to do.
    if which_bpf_linker().is_none() {
        return Err(anyhow!(
            "bpf-linker is not installed: run `cargo xtask setup` (it builds bpf-linker against the nightly's LLVM)"
        ));
    }
    let package = aya_build::Package {
        name: name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    // A pinned nightly (the container build names one) instead of whatever `nightly` is.
    println!("cargo:rerun-if-env-changed=PROFILER_EBPF_TOOLCHAIN");
    let pinned = std::env::var("PROFILER_EBPF_TOOLCHAIN").ok();
    let toolchain = match pinned.as_deref() {
        Some(name) if !name.is_empty() => Toolchain::Custom(name),
        _ => Toolchain::default(),
    };
    aya_build::build_ebpf([package], toolchain)
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("bpf-linker"))
        .find(|candidate| candidate.is_file())
}
