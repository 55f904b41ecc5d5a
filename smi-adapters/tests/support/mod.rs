//! Shared by the integration tests: the upstream CRD schemas from `../shared/schemas`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use smi_adapters::schema::Schemas;

/// `../shared/schemas` beside the repository.
pub fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/schemas")
}

/// Every CRD under `../shared/schemas`. Fails loudly when the folder is missing: the schema
/// checks are part of the suite, never skipped.
pub fn schemas() -> Schemas {
    let dir = schemas_dir();
    assert!(
        dir.is_dir(),
        "\n\n*** {} is missing: the upstream CRD schemas are needed to validate rendered \
         resources (clone the project with ../shared beside it) ***\n",
        dir.display()
    );
    let mut s = Schemas::new();
    let mut n = 0;
    for mesh in std::fs::read_dir(&dir).unwrap() {
        let mesh = mesh.unwrap().path();
        if !mesh.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&mesh).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "yaml") {
                n += s
                    .add_crds(&std::fs::read_to_string(&f).unwrap())
                    .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            }
        }
    }
    assert!(n > 50, "only {n} CRD versions found in {}", dir.display());
    s
}
