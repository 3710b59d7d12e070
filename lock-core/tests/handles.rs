//! What the application types promise at compile time: handles that are cheap to share and
//! spawn, a locker and a guard that move into a task.

use lock_core::{
    Done, Error, ErrorKind, Fence, Held, Lock, Locker, Lost, Service, Session, TryLock, Unlock,
};

fn shareable<T: Clone + Send + Sync + 'static>() {}
fn movable<T: Send + Sync + 'static>() {}
/// Futures: spawnable.
fn spawnable<T: Send + 'static>() {}
fn sendable<T: Send>() {}

#[test]
fn handles_are_clone_send_sync_static() {
    shareable::<Service>();
    shareable::<Session>();
    // One party: not `Clone` (see its compile_fail doc test), but it moves into a task.
    movable::<Locker>();
    movable::<Held>();
    shareable::<Fence>();
    // Observers share them (`Sync`) and spawn them.
    movable::<Lost>();
    movable::<Done>();
    spawnable::<Lost>();
    spawnable::<Done>();
    spawnable::<Unlock>();
    sendable::<Lock<'static>>();
    sendable::<TryLock<'static>>();
}

#[test]
fn handles_are_small() {
    // One `Arc` each, so cloning one is one reference count: the service's and session's
    // state (a word), the backend's locker (`Arc<dyn …>`, two words).
    assert_eq!(std::mem::size_of::<Service>(), std::mem::size_of::<usize>());
    assert_eq!(std::mem::size_of::<Session>(), std::mem::size_of::<usize>());
    assert_eq!(
        std::mem::size_of::<Locker>(),
        2 * std::mem::size_of::<usize>()
    );
}

#[test]
fn error_kinds_compare() {
    let kind = Error::Timeout(std::time::Duration::from_secs(1)).kind();
    let copy = kind;
    assert_eq!(kind, copy);
    assert_eq!(kind, ErrorKind::Timeout);
    assert_ne!(Error::NotHeld.kind(), ErrorKind::Lost);
}
