//! Where a target lives: its cgroup, the container id in it if any, and whether it runs in
//! pid or mount namespaces other than ours. The profiler takes the host pid; everything it
//! reads of the target goes through /proc/PID (map_files, root), so a containerised target
//! needs nothing more.

use std::{fs, path::Path};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The cgroup v2 path (or the first v1 controller path on a v1-only host).
    pub cgroup: Option<String>,
    /// A 64-hex-digit container id found in the cgroup path (docker, containerd, cri-o, podman).
    pub container_id: Option<String>,
    /// The target's pid as its own pid namespace numbers it, when that is not ours.
    pub namespace_pid: Option<u32>,
    pub own_pid_namespace: bool,
    pub own_mount_namespace: bool,
}

pub fn placement(pid: u32) -> Placement {
    let proc = Path::new("/proc").join(pid.to_string());
    let cgroup = fs::read_to_string(proc.join("cgroup"))
        .ok()
        .and_then(|text| cgroup_path(&text));
    let differs = |ns: &str| {
        let theirs = fs::read_link(proc.join("ns").join(ns)).ok();
        let ours = fs::read_link(Path::new("/proc/self/ns").join(ns)).ok();
        theirs.is_some() && theirs != ours
    };
    let own_pid_namespace = differs("pid");
    let namespace_pid = own_pid_namespace
        .then(|| {
            fs::read_to_string(proc.join("status"))
                .ok()
                .and_then(|status| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix("NSpid:"))
                        .and_then(|ids| ids.split_whitespace().last()?.parse().ok())
                })
        })
        .flatten();
    Placement {
        container_id: cgroup.as_deref().and_then(container_id),
        cgroup,
        namespace_pid,
        own_pid_namespace,
        own_mount_namespace: differs("mnt"),
    }
}

/// The unified (v2) entry of /proc/PID/cgroup, else the first non-root v1 path.
fn cgroup_path(text: &str) -> Option<String> {
    let entries: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            Some((parts.next()?, parts.next()?))
        })
        .collect();
    entries
        .iter()
        .find(|(controllers, path)| controllers.is_empty() && *path != "/")
        .or_else(|| entries.iter().find(|(_, path)| *path != "/"))
        .or_else(|| entries.first())
        .map(|(_, path)| path.to_string())
}

/// The last 64-hex-digit run in a cgroup path: how docker (`docker-<id>.scope`), containerd
/// and cri-o (`cri-containerd-<id>`, `crio-<id>`) and podman (`libpod-<id>`) name them.
fn container_id(path: &str) -> Option<String> {
    path.split(|c: char| !c.is_ascii_hexdigit())
        .rfind(|run| run.len() == 64)
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_container_ids() {
        let id = "4f9e3e8a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6";
        let v2 = format!("0::/system.slice/docker-{id}.scope\n");
        assert_eq!(
            cgroup_path(&v2).as_deref(),
            Some(format!("/system.slice/docker-{id}.scope").as_str())
        );
        assert_eq!(
            container_id(&cgroup_path(&v2).unwrap()).as_deref(),
            Some(id)
        );
        let k8s = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-{id}.scope"
        );
        assert_eq!(container_id(&k8s).as_deref(), Some(id));
        assert_eq!(
            container_id("/user.slice/user-0.slice/session-3.scope"),
            None
        );
        // A v1-only host: the first controller with a path.
        let v1 = "4:memory:/process_api/6ac0\n3:cpuset:/\n0::/\n";
        assert_eq!(cgroup_path(v1).as_deref(), Some("/process_api/6ac0"));
    }

    #[test]
    fn our_own_placement() {
        let p = placement(std::process::id());
        assert!(!p.own_pid_namespace && !p.own_mount_namespace);
        assert_eq!(p.namespace_pid, None);
        assert!(p.cgroup.is_some());
    }
}
