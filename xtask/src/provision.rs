//! Finds or installs the tools the tests need: `protoc` (for etcd-client's build) and `etcd`.
//!
//! Nothing needs root: protoc comes from the `protoc-bin-vendored` crate; etcd from Debian's
//! archive (`deb.debian.org`, a package registry every machine here reaches): the packages
//! `etcd-server` and `etcd-client` of a Debian release, found in that release's package index,
//! checked against the index's SHA-256, and unpacked under `target/tools/` (a `.deb` is an `ar`
//! archive holding a tarball; `python3`'s standard library reads both).
//!
//! Two etcd series are tested: 3.5 (Debian forky, "testing": 3.5.30) runs every test; 3.4
//! (Debian bookworm: 3.4.23) runs the conformance suite. Not trixie's 3.5.16: it has the fix for
//! etcd's early lease revocation (issue 15247, 3.5.11) but still revokes every lease when its
//! leader resumes from a stop longer than the TTL (docs/RELIABILITY.md); 3.5.30 does not.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::run::workspace_root;

/// An etcd release, as a Debian release packages it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EtcdRelease {
    /// The etcd series, for directory names and messages.
    pub(crate) series: &'static str,
    /// The Debian release whose `etcd-server`/`etcd-client` packages carry it.
    pub(crate) debian: &'static str,
}

/// The etcd every test runs on.
pub(crate) const ETCD: EtcdRelease = EtcdRelease {
    series: "3.5",
    debian: "forky",
};

/// The older series the conformance suite also runs on (the README supports etcd ≥ 3.4).
pub(crate) const ETCD_OLD: EtcdRelease = EtcdRelease {
    series: "3.4",
    debian: "bookworm",
};

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
/// [`ETCD`] under `target/tools/`, installing it there if needed.
pub(crate) fn etcd() -> Result<(PathBuf, PathBuf), String> {
    if let Some(dir) = std::env::var_os("LOCK_ETCD_BIN") {
        let dir = PathBuf::from(dir);
        return Ok((dir.join("etcd"), dir.join("etcdctl")));
    }
    if let (Some(etcd), Some(etcdctl)) = (on_path("etcd"), on_path("etcdctl")) {
        return Ok((etcd, etcdctl));
    }
    release(ETCD)
}

/// `etcd` and `etcdctl` of `release` under `target/tools/etcd-<series>-<debian>/`, installed if
/// needed.
pub(crate) fn release(release: EtcdRelease) -> Result<(PathBuf, PathBuf), String> {
    let dir = workspace_root().join(format!(
        "target/tools/etcd-{}-{}",
        release.series, release.debian
    ));
    if !dir.join("etcd").exists() || !dir.join("etcdctl").exists() {
        install(release, &dir)?;
    }
    Ok((dir.join("etcd"), dir.join("etcdctl")))
}

/// Fetches the packages' index of the Debian release, then the two packages, checks their
/// SHA-256 against the index, and writes `etcd` and `etcdctl` into `out`.
const FETCH: &str = r#"
import hashlib, io, lzma, os, sys, tarfile, urllib.request
suite, arch, out = sys.argv[1:4]
base = "http://deb.debian.org/debian/"
def get(path):
    with urllib.request.urlopen(base + path, timeout=300) as r:
        return r.read()
index = lzma.decompress(get(f"dists/{suite}/main/binary-{arch}/Packages.xz")).decode()
packages = {}
for para in index.split("\n\n"):
    fields = dict(l.split(": ", 1) for l in para.splitlines() if ": " in l and not l.startswith(" "))
    if fields.get("Package") in ("etcd-server", "etcd-client"):
        packages[fields["Package"]] = fields
wanted = {"etcd-server": "etcd", "etcd-client": "etcdctl"}
os.makedirs(out, exist_ok=True)
for package, tool in wanted.items():
    fields = packages.get(package)
    if fields is None:
        sys.exit(f"Debian {suite} has no package {package}")
    deb = get(fields["Filename"])
    if hashlib.sha256(deb).hexdigest() != fields["SHA256"]:
        sys.exit(f"{fields['Filename']}: SHA-256 does not match the package index")
    pos, found = 8, False
    while pos < len(deb):
        header = deb[pos:pos + 60]
        name, size = header[:16].decode().strip(), int(header[48:58])
        body = deb[pos + 60:pos + 60 + size]
        pos += 60 + size + size % 2
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                member = tar.getmember(f"./usr/bin/{tool}")
                with open(os.path.join(out, tool), "wb") as f:
                    f.write(tar.extractfile(member).read())
                os.chmod(os.path.join(out, tool), 0o755)
                found = True
    if not found:
        sys.exit(f"{fields['Filename']} holds no usr/bin/{tool}")
    print(f"{package} {fields['Version']}")
"#;

fn install(release: EtcdRelease, dir: &Path) -> Result<(), String> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => {
            return Err(format!(
                "no Debian etcd package for {other}; set LOCK_ETCD_BIN"
            ))
        }
    };
    eprintln!(
        "xtask: installing etcd {} (Debian {}'s etcd-server and etcd-client) under {}",
        release.series,
        release.debian,
        dir.display()
    );
    let python = on_path("python3")
        .ok_or("python3 is needed to fetch etcd from Debian's archive; or set LOCK_ETCD_BIN")?;
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    let output = Command::new(&python)
        .args(["-c", FETCH, release.debian, arch])
        .arg(&partial)
        .output()
        .map_err(|e| format!("running python3: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "fetching etcd {} from Debian {} failed: {}; install etcd and put it on PATH, or set \
             LOCK_ETCD_BIN",
            release.series,
            release.debian,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let installed = String::from_utf8_lossy(&output.stdout);
    let version = installed
        .lines()
        .find_map(|l| l.strip_prefix("etcd-server "))
        .unwrap_or("?");
    if !version.starts_with(&format!("{}.", release.series)) {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(format!(
            "Debian {} now packages etcd {version}, not {}: choose another Debian release in \
             xtask/src/provision.rs, or set LOCK_ETCD_BIN",
            release.debian, release.series
        ));
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&partial, dir).map_err(|e| format!("moving {}: {e}", partial.display()))?;
    eprintln!(
        "xtask: installed {}",
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .replace('\n', ", ")
    );
    Ok(())
}

pub(crate) fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
