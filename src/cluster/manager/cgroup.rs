//! Best-effort memory limits through cgroup v2: each executor runs in its own child group
//! of the configured directory, with `memory.max` set to its lease's memory. The executor
//! enters the group before it runs (a `sh` wrapper writes its pid into `cgroup.procs` and
//! then `exec`s the executor), so no allocation escapes the limit.
//!
//! Where the directory is missing, not cgroup v2, not writable or lacks the memory
//! controller, the manager says so once at start and runs executors without limits.

use std::path::{Path, PathBuf};

/// A usable cgroup v2 parent: checks it and enables the memory controller for its children.
///
/// # Errors
/// A sentence saying why the directory cannot be used.
pub(crate) fn probe(dir: &Path) -> Result<PathBuf, String> {
    let controllers = std::fs::read_to_string(dir.join("cgroup.controllers")).map_err(|e| {
        format!(
            "{} is not a cgroup v2 directory ({e}); memory limits are off",
            dir.display()
        )
    })?;
    if !controllers.split_whitespace().any(|c| c == "memory") {
        return Err(format!(
            "the memory controller is not available in {} (controllers: {}); memory limits are off",
            dir.display(),
            controllers.trim()
        ));
    }
    let subtree = dir.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&subtree).unwrap_or_default();
    if !enabled.split_whitespace().any(|c| c == "memory") {
        std::fs::write(&subtree, "+memory").map_err(|e| {
            format!(
                "cannot enable the memory controller in {} ({e}); memory limits are off",
                subtree.display()
            )
        })?;
    }
    Ok(dir.to_path_buf())
}

/// A child group for one executor, removed when dropped (the executor must be gone).
#[derive(Debug)]
pub(crate) struct ExecutorGroup {
    path: PathBuf,
}

impl ExecutorGroup {
    /// Creates `<parent>/rafi-<allocation>` with `memory.max` = `memory_mib` (no limit when
    /// 0).
    pub(crate) fn create(parent: &Path, allocation: u64, memory_mib: u64) -> std::io::Result<Self> {
        let path = parent.join(format!("rafi-{}-{allocation}", std::process::id()));
        std::fs::create_dir(&path)?;
        let group = Self { path };
        if memory_mib > 0 {
            std::fs::write(
                group.path.join("memory.max"),
                (memory_mib << 20).to_string(),
            )?;
        }
        Ok(group)
    }

    /// The command prefix that moves the process into this group and `exec`s the rest.
    pub(crate) fn wrapper(&self) -> Vec<String> {
        wrapper(&self.path)
    }
}

/// `sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' <group>`: the command that follows
/// runs inside the group, under the same process id.
pub(crate) fn wrapper(group: &Path) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        r#"echo $$ > "$0/cgroup.procs" && exec "$@""#.into(),
        group.display().to_string(),
    ]
}

impl Drop for ExecutorGroup {
    fn drop(&mut self) {
        // A group with processes cannot be removed; the kernel frees it when they go.
        if let Err(e) = std::fs::remove_dir(&self.path) {
            eprintln!(
                "rafi executor-manager: cannot remove cgroup {}: {e}",
                self.path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_is_not_a_cgroup() {
        let dir = std::env::temp_dir();
        assert!(probe(&dir).unwrap_err().contains("not a cgroup v2"));
    }

    #[test]
    fn the_wrapper_runs_the_command_inside_the_group() {
        // A plain directory stands in for the group: the wrapper writes the pid and execs.
        let dir = std::env::temp_dir().join(format!("rafi-cgroup-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut args = wrapper(&dir);
        args.extend(["sh".into(), "-c".into(), "echo $$".into()]);
        let out = std::process::Command::new(&args[0])
            .args(&args[1..])
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let written = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert_eq!(written.trim(), printed, "same process id, inside the group");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
