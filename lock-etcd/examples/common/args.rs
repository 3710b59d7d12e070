//! Command-line options of the examples (`--name value`).
#![allow(dead_code)]

/// The value after `name` on the command line, if any.
pub(crate) fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The number after `name`, or `default`.
///
/// # Panics
///
/// When the value is not a number: the example cannot run as asked.
pub(crate) fn number(name: &str, default: u64) -> u64 {
    arg(name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} takes a number, not `{v}`"))
    })
}
