//! The suite is complete by construction: every public conformance function is run by
//! `conformance_tests!`, and the macro runs nothing else. A function added to
//! `src/conformance/` and left out of the macro's list fails here, instead of compiling and
//! never running.

use std::collections::BTreeSet;
use std::path::Path;

/// `pub async fn NAME(h: &Harness)` in the sources of `src/conformance/`.
fn conformance_functions(dir: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir(dir).expect("reading src/conformance") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("reading a conformance source");
        // A signature may wrap: its arguments run to the first `)` after the name.
        for (at, _) in source.match_indices("pub async fn ") {
            let rest = &source[at + "pub async fn ".len()..];
            if let Some((name, args)) = rest.split_once('(') {
                let args = args.split_once(')').map_or(args, |(args, _)| args);
                if args.contains("Harness") {
                    found.insert(name.trim().to_owned());
                }
            }
        }
    }
    found
}

/// The names between `$harness;` and the closing brace of `conformance_tests!` in `lib.rs`.
fn listed_in_macro(lib: &str) -> BTreeSet<String> {
    let start = lib
        .find("macro_rules! conformance_tests")
        .expect("conformance_tests! in lib.rs");
    let body = &lib[start..];
    let list = body
        .split_once("$harness;")
        .expect("the macro's list starts after `$harness;`")
        .1;
    let list = list.split_once('}').expect("the list ends with `}`").0;
    list.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_public_conformance_function_is_run_by_the_macro() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let functions = conformance_functions(&root.join("src/conformance"));
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).expect("reading src/lib.rs");
    let listed = listed_in_macro(&lib);
    assert!(
        functions.len() >= 40,
        "found only {} conformance functions: is the scan broken?",
        functions.len()
    );
    let missing: Vec<_> = functions.difference(&listed).collect();
    let unknown: Vec<_> = listed.difference(&functions).collect();
    assert!(
        missing.is_empty(),
        "public conformance functions that `conformance_tests!` does not run: {missing:?} \
         (add them to the list in src/lib.rs)"
    );
    assert!(
        unknown.is_empty(),
        "`conformance_tests!` lists names that are not public conformance functions: {unknown:?}"
    );
}

/// The check can fail: a source with one more function than the list is reported.
#[test]
fn a_function_left_out_of_the_list_is_found() {
    let dir = std::env::temp_dir().join(format!("lock-testkit-complete-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("extra.rs"),
        "pub async fn listed(h: &Harness) -> Outcome { Ok(()) }\n\
         pub async fn forgotten(h: &Harness) -> Outcome { Ok(()) }\n\
         pub async fn helper_without_harness(x: u8) {}\n",
    )
    .unwrap();
    let functions = conformance_functions(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    let listed = listed_in_macro(
        "macro_rules! conformance_tests { ($harness:expr) => { x! { $harness; listed, } } }",
    );
    let missing: Vec<_> = functions.difference(&listed).cloned().collect();
    assert_eq!(missing, ["forgotten"]);
}
