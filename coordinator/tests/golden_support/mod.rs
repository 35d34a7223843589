//! Golden-file comparison shared by the `metalctl` output tests.

#![allow(clippy::unwrap_used)]

use std::path::Path;

/// Compares `actual` with `tests/golden/<name>.txt`, or rewrites the file when
/// `UPDATE_GOLDEN=1`.
pub fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.txt"));
    if std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    assert!(
        actual == want,
        "{} differs (UPDATE_GOLDEN=1 to accept)\n--- want\n{want}--- got\n{actual}",
        path.display()
    );
}
