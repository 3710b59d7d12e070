//! Lock ids: any non-empty UTF-8 up to the maximum length.

use lock_core::{Error, MAX_ID_LEN};

use crate::conformance::{expect_err, PATIENCE};
use crate::{ensure, Harness, Outcome};

/// Ids with slashes, spaces, unicode, look-alike prefixes and the maximum length all work, and
/// are independent of each other (`a` does not collide with `a/b`).
pub async fn unusual_ids_work(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let session = service.new_session(h.config()).await?;
    let longest = "x".repeat(MAX_ID_LEN - h.prefix_len());
    let names = [
        "a",
        "a/b",
        "a/",
        "a/b/c",
        "/",
        "//",
        "with space",
        "ünïcödé ✓ 🔒",
        "%2F",
        "..",
        "line\nbreak",
        "a\u{0}b",
        "*",
        "?x=1&y",
        longest.as_str(),
    ];
    let mut holds = Vec::new();
    for name in names {
        let mut locker = session.new_locker(&h.id(name));
        let held = h
            .within(PATIENCE, &format!("locking id {name:?}"), locker.try_lock())
            .await??;
        let Some(held) = held else {
            return Err(crate::Failure::new(format!(
                "id {name:?} was not free: it collides with another id"
            )));
        };
        ensure!(
            locker.id() == h.id(name) && held.id() == h.id(name),
            "locker.id() or Held::id() does not return the id it was made for"
        );
        holds.push(held);
    }
    for held in holds {
        held.unlock().await?;
    }
    service.close().await?;
    Ok(())
}

/// Empty and over-long ids fail with `InvalidId` from `lock` and `try_lock`.
pub async fn invalid_ids_are_rejected(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let session = service.new_session(h.config()).await?;
    let invalid = |e: &Error| matches!(e, Error::InvalidId(_));
    for id in [String::new(), "y".repeat(MAX_ID_LEN + 1)] {
        let mut locker = session.new_locker(&id);
        expect_err(
            "lock() with an invalid id",
            locker.lock().await,
            "InvalidId",
            invalid,
        )?;
        expect_err(
            "try_lock() with an invalid id",
            locker.try_lock().await,
            "InvalidId",
            invalid,
        )?;
        expect_err(
            "unlock() with an invalid id",
            locker.unlock().await,
            "NotHeld",
            |e| matches!(e, Error::NotHeld | Error::InvalidId(_)),
        )?;
    }
    service.close().await?;
    Ok(())
}
