//! The declared minimum versions of direct dependencies are the tested ones.
//!
//! A requirement such as `tokio = "1.40"` promises users that tokio 1.40 works, but every test
//! runs the lockfile's version: a call that a later minor release added (tokio's
//! `task::coop::poll_proceed`) compiles here and fails for a user whose lockfile has an older
//! one. Cargo's stable toolchain cannot resolve minimal versions, so the rule is the one the
//! tests can back: each direct dependency's declared minimum is at least the minor release the
//! lockfile — and so every test — uses (for a 0.x crate, the patch release).

use std::path::Path;

/// One `name = "req"` or `name = { version = "req", … }` of a `[dependencies]` table.
struct Requirement {
    manifest: String,
    name: String,
    version: Vec<u64>,
}

/// Checks every direct dependency's declared minimum against `Cargo.lock`.
pub(crate) fn check(root: &Path) -> Result<(), String> {
    let mut requirements = Vec::new();
    for manifest in manifests(root)? {
        let text = std::fs::read_to_string(&manifest)
            .map_err(|e| format!("reading {}: {e}", manifest.display()))?;
        let shown = manifest
            .strip_prefix(root)
            .unwrap_or(&manifest)
            .display()
            .to_string();
        requirements.extend(requirements_in(&shown, &text));
    }
    let lock = std::fs::read_to_string(root.join("Cargo.lock"))
        .map_err(|e| format!("reading Cargo.lock: {e}"))?;
    let locked = locked_versions(&lock);
    let mut stale = Vec::new();
    for req in &requirements {
        let compatible = locked
            .iter()
            .filter(|(name, v)| *name == req.name && compatible(&req.version, v))
            .map(|(_, v)| v)
            .min();
        let Some(tested) = compatible else {
            stale.push(format!(
                "{}: {} {} matches no version in Cargo.lock",
                req.manifest,
                req.name,
                dotted(&req.version)
            ));
            continue;
        };
        if below_minor(&req.version, tested) {
            stale.push(format!(
                "{}: {} declares {} but every test runs {}: declare \"{}\"",
                req.manifest,
                req.name,
                dotted(&req.version),
                dotted(tested),
                match tested.first() {
                    Some(0) => dotted(tested),
                    _ => dotted(&tested[..2.min(tested.len())]),
                }
            ));
        }
    }
    if !stale.is_empty() {
        return Err(format!(
            "declared minimum versions below what the tests use:\n  {}",
            stale.join("\n  ")
        ));
    }
    eprintln!(
        "xtask: {} declared dependency minimums are the tested minor releases",
        requirements.len()
    );
    Ok(())
}

/// The workspace's manifest and its members' (found one directory deep, and in `third-party/`).
fn manifests(root: &Path) -> Result<Vec<std::path::PathBuf>, String> {
    let mut found = vec![root.join("Cargo.toml")];
    for dir in [root.to_path_buf(), root.join("third-party")] {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let manifest = entry.path().join("Cargo.toml");
            if entry.file_name() != "target" && manifest.is_file() {
                found.push(manifest);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The version requirements of a manifest's `[dependencies]` (optional ones included) and
/// `[workspace.dependencies]`: what users' builds resolve. Path-only and `workspace = true`
/// entries have none of their own; dev- and build-dependencies do not reach users.
fn requirements_in(manifest: &str, text: &str) -> Vec<Requirement> {
    let mut out = Vec::new();
    let mut in_table = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_table = matches!(line, "[dependencies]" | "[workspace.dependencies]");
            continue;
        }
        if !in_table || line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((name, spec)) = line.split_once('=') else {
            continue;
        };
        let (name, spec) = (name.trim(), spec.trim());
        let name = match spec.split_once("package = \"") {
            Some((_, rest)) => rest.split('"').next().unwrap_or(name),
            None => name,
        };
        let version = if let Some(quoted) = spec.strip_prefix('"') {
            quoted.split('"').next()
        } else if spec.contains("path = ") {
            None // one of ours
        } else {
            spec.split_once("version = \"")
                .and_then(|(_, rest)| rest.split('"').next())
        };
        let Some(version) = version else {
            continue;
        };
        let numbers: Option<Vec<u64>> = version
            .trim_start_matches(['^', '='])
            .split('.')
            .map(|n| n.parse().ok())
            .collect();
        if let Some(version) = numbers {
            out.push(Requirement {
                manifest: manifest.to_owned(),
                name: name.to_owned(),
                version,
            });
        }
    }
    out
}

/// Every `(name, version)` of `Cargo.lock`.
fn locked_versions(lock: &str) -> Vec<(&str, Vec<u64>)> {
    let mut out = Vec::new();
    let mut name = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = \"") {
            name = n.strip_suffix('"');
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = \""), name.take()) {
            let numbers: Option<Vec<u64>> = v
                .trim_end_matches('"')
                .split(['.', '-', '+'])
                .take(3)
                .map(|n| n.parse().ok())
                .collect();
            out.extend(numbers.map(|v| (n, v)));
        }
    }
    out
}

/// Whether the caret requirement `req` admits `version` (same major; same minor for 0.x).
fn compatible(req: &[u64], version: &[u64]) -> bool {
    let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
    match at(req, 0) {
        0 => at(version, 0) == 0 && at(version, 1) == at(req, 1),
        major => at(version, 0) == major,
    }
}

/// Whether `req` names an older release than `tested` where it matters: an older minor (or,
/// for a 0.x crate, whose patch releases add API as minors do, an older patch).
fn below_minor(req: &[u64], tested: &[u64]) -> bool {
    let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
    match at(tested, 0) {
        0 => (at(req, 1), at(req, 2)) < (at(tested, 1), at(tested, 2)),
        _ => (at(req, 0), at(req, 1)) < (at(tested, 0), at(tested, 1)),
    }
}

fn dotted(version: &[u64]) -> String {
    let parts: Vec<String> = version.iter().map(u64::to_string).collect();
    parts.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_declared_minor_is_found_and_the_tested_one_passes() {
        let manifest = "[dependencies]\ntokio = { version = \"1.40\", default-features = false }\n\
                        humantime = \"2\"\nours = { path = \"../ours\", version = \"0.1.0\" }\n\
                        [dev-dependencies]\nclap = \"4.0\"\n";
        let reqs = requirements_in("Cargo.toml", manifest);
        let names: Vec<&str> = reqs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["tokio", "humantime"]);
        let lock = "[[package]]\nname = \"tokio\"\nversion = \"1.54.1\"\n\n\
                    [[package]]\nname = \"humantime\"\nversion = \"2.3.0\"\n";
        let locked = locked_versions(lock);
        assert!(below_minor(&reqs[0].version, &locked[0].1));
        assert!(compatible(&reqs[0].version, &locked[0].1));
        assert!(!below_minor(&[1, 54], &locked[0].1));
        assert!(below_minor(&reqs[1].version, &locked[1].1)); // "2" means 2.0
        assert!(!compatible(&[0, 21], &[0, 22, 0]));
        assert!(below_minor(&[0, 1, 40], &[0, 1, 44]));
        assert!(!below_minor(&[0, 1, 44], &[0, 1, 44]));
    }
}
