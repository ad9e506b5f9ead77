//! The container image cannot be built here (no Docker engine); what can be checked is that
//! the runtime stage has all the binary needs, and that the build stage pins the nightly the
//! eBPF build is tested with.

use std::process::Command;

const DOCKERFILE: &str = include_str!("../../Dockerfile");

#[test]
fn runtime_image_needs_only_libc() {
    // debian:bookworm-slim has glibc and nothing else we could link to.
    let out = Command::new("readelf")
        .args(["-d", env!("CARGO_BIN_EXE_profiler")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let needed: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.split(']').next())
        .collect();
    assert!(!needed.is_empty());
    for lib in &needed {
        assert!(
            [
                "libc.so.6",
                "libm.so.6",
                "libgcc_s.so.1",
                "ld-linux-x86-64.so.2"
            ]
            .contains(lib),
            "{lib} is not in the runtime image"
        );
    }
    assert!(DOCKERFILE.contains("FROM debian:bookworm-slim"));
    assert!(DOCKERFILE.contains("COPY --from=build /src/target/release/profiler"));
}

#[test]
fn build_stage_pins_the_tested_nightly() {
    let pinned = DOCKERFILE
        .lines()
        .find_map(|l| l.strip_prefix("ENV PROFILER_EBPF_TOOLCHAIN="))
        .expect("the Dockerfile pins the eBPF toolchain");
    // The nightly on development and CI machines, by its channel date.
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .unwrap();
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let manifest = std::fs::read_to_string(format!(
        "{sysroot}/lib/rustlib/multirust-channel-manifest.toml"
    ))
    .unwrap();
    let date = manifest
        .lines()
        .find_map(|l| l.strip_prefix("date = "))
        .unwrap()
        .trim_matches('"');
    assert_eq!(
        pinned,
        format!("nightly-{date}"),
        "the Dockerfile pins another nightly"
    );
    assert!(
        DOCKERFILE.contains("--version 0.13.0"),
        "bpf-linker as xtask setup builds it"
    );
}

/// The `agent` stage's entrypoint and default arguments, joined as docker joins them, are a
/// command line the agent accepts, on the port the docs and the DaemonSet name.
#[test]
fn agent_stage_runs_the_agent() {
    use clap::Parser as _;
    let stage = &DOCKERFILE[DOCKERFILE
        .find("FROM runtime AS agent")
        .expect("an agent stage")..];
    let array = |prefix: &str| -> Vec<String> {
        let line = stage
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix}in the agent stage"));
        serde_json::from_str(line).expect("an exec-form array")
    };
    let mut argv = array("ENTRYPOINT ");
    argv.extend(array("CMD "));
    assert_eq!(argv[..2], ["/usr/local/bin/profiler", "agent"]);
    let cli = profiler::cli::Cli::try_parse_from(&argv).expect("arguments the agent accepts");
    let profiler::cli::Command::Agent(args) = cli.command else {
        panic!("not the agent: {argv:?}")
    };
    let opts = args.into_options(false).expect("valid agent options");
    assert_eq!(opts.listen.port(), 9464);
    assert!(opts.attach.sock.is_some() && opts.attach.cpu.is_some());
}
