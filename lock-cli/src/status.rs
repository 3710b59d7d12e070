//! `lock status ID`.

use std::time::{Duration, UNIX_EPOCH};

use crate::args::Command;
use crate::open::{open, unavailable};
use crate::{exit, Failure};

/// `since=<unix ms>` from a key's owner text, as a readable time.
pub(crate) fn since(owner: &str) -> Option<String> {
    let ms: u64 = owner
        .split_whitespace()
        .find_map(|w| w.strip_prefix("since="))?
        .parse()
        .ok()?;
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    Some(humantime::format_rfc3339_seconds(at).to_string())
}

pub(crate) async fn run(command: Command) -> Result<u8, Failure> {
    let Command::Status { common, id } = command else {
        unreachable!()
    };
    let opened = open(&common).await?;
    let Some(etcd) = opened.etcd else {
        return Err(Failure::new(
            exit::USAGE,
            "lock status needs the etcd backend",
        ));
    };
    let status = etcd.status(&id).await.map_err(unavailable)?;
    let waiters = match (&status.delay, status.keys.split_first()) {
        (Some(delay), _) => {
            println!(
                "lock {id}: free after a lock-delay: the hold with fencing token {} ended \
                 without a clean release (its lease expired or was revoked, or its key was \
                 deleted); nobody is granted the lock until {} at the latest (lock-delay {})",
                delay.token,
                humantime::format_rfc3339_seconds(delay.until),
                humantime::format_duration(delay.delay),
            );
            &status.keys[..]
        }
        (None, None) => {
            println!("lock {id}: free");
            &[][..]
        }
        (None, Some((holder, waiters))) => {
            let owner: Vec<&str> = holder
                .owner
                .split_whitespace()
                .filter(|w| !w.starts_with("since="))
                .collect();
            println!(
                "lock {id}: held by lease {:016x}, fencing token {}, since {} ({})",
                holder.lease,
                holder.token,
                since(&holder.owner).unwrap_or_else(|| "?".into()),
                owner.join(" ")
            );
            waiters
        }
    };
    if !status.keys.is_empty() {
        println!("  {} waiting", waiters.len());
        for w in waiters {
            println!(
                "    lease {:016x}, queued since {}",
                w.lease,
                since(&w.owner).unwrap_or_else(|| "?".into())
            );
        }
    }
    Ok(0)
}
