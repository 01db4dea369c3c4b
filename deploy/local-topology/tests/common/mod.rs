use std::path::PathBuf;

/// A binary of the workspace, built by `cargo test --workspace` into the
/// same target folder as this test.
pub fn binary(name: &str) -> PathBuf {
    let dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_owned();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` (scripts/test.sh does)",
        path.display()
    );
    path
}
