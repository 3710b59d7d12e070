//! Runnable examples of the `lock` crate; see the `examples/` folder.
