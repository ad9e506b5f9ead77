//! A target in its own pid and mount namespaces, as root: its binary exists only inside its
//! mount namespace, yet its stacks must be named, its allocator probed, and its placement
//! reported. Pids given to the profiler are the host's.

mod common;

use std::{path::Path, process::Command, time::Duration};

use common::*;

/// The host pid of `parent`'s only child.
fn child_of(parent: u32) -> u32 {
    let children =
        std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).unwrap();
    children
        .split_whitespace()
        .next()
        .expect("unshare forked its child")
        .parse()
        .unwrap()
}

/// Kills a process we did not spawn ourselves, by pid, when dropped.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of the namespaced fixture this test started.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

#[test]
fn profiles_a_target_whose_binary_exists_only_in_its_namespace() {
    require_root!();
    let fixture = build_c(&CBuild {
        source: "cpu_burn",
        output: "cpu_burn-fp",
        cflags: FRAME_POINTERS,
        libs: &[],
    })
    .unwrap();
    let inside = std::env::temp_dir().join(format!("profiler-ns-{}", std::process::id()));
    std::fs::create_dir_all(&inside).unwrap();
    // A tmpfs mounted in the new mount namespace only: the copy of the fixture in it is
    // invisible from here.
    let script = format!(
        "mount -t tmpfs tmpfs {dir} && cp {fixture} {dir}/ns_burn && exec {dir}/ns_burn",
        dir = inside.display(),
        fixture = fixture.display()
    );
    let mut unshare = ChildGuard::spawn(
        Command::new("unshare")
            .args([
                "--pid",
                "--mount",
                "--fork",
                "--kill-child",
                "--propagation",
                "private",
            ])
            .args(["sh", "-c", &script]),
    )
    .unwrap();
    unshare
        .wait_for_line("ready", Duration::from_secs(10))
        .unwrap();
    let pid = child_of(unshare.pid());
    let _target = KillOnDrop(pid);
    assert!(
        !inside.join("ns_burn").exists(),
        "the binary must not be visible from the host"
    );

    let mut opts = options(pid, Duration::from_secs(3), output_dir("container"));
    opts.alloc = Some(profiler::probes::alloc::Config::default());
    let (_, outcome) = capture(opts, || {});

    let placement = &outcome.summary.target.placement;
    assert!(
        placement.own_pid_namespace && placement.own_mount_namespace,
        "{placement:?}"
    );
    assert_eq!(placement.namespace_pid, Some(1));
    let exe = outcome.summary.target.exe.as_deref().unwrap();
    assert!(exe.ends_with("/ns_burn"), "{exe}");
    // Symbols come from the namespaced file, read through /proc/PID/map_files.
    let stacks = folded(&outcome, "cpu.folded");
    assert!(
        stacks.iter().any(|(frames, _)| frames
            .windows(3)
            .any(|w| w == ["outer", "middle", "hot_leaf"])),
        "{stacks:?}"
    );
    // The allocator was found and probed through /proc/PID/root.
    let alloc = outcome.summary.alloc.as_ref().unwrap();
    assert_eq!(alloc.allocator.name, "glibc");
    assert!(
        Path::new(&format!(
            "/proc/{pid}/root{}",
            alloc.allocator.path.display()
        ))
        .exists()
    );
    drop(unshare);
    let _ = std::fs::remove_dir(&inside);
}
