//! The traffic-spec input of smi-adapters: YAML documents (and an optional catalog JSON) from
//! a file or a cluster, translated for one mesh.
//!
//! Property: whatever the text, translation never panics and returns in bounded time (the
//! input bounds of `smi_adapters::input`), and a complete translation renders YAML that reads
//! back as the very resources it was rendered from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use smi_adapters::render::{Mesh, Options};

/// Separates the traffic specs from the catalog JSON in an input.
const CATALOG_MARK: &str = "\n#%catalog\n";

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let mesh = Mesh::ALL[usize::from(pick) % Mesh::ALL.len()];
    let text = String::from_utf8_lossy(rest);
    let (specs, catalog) = match text.split_once(CATALOG_MARK) {
        Some((s, c)) => (s.to_string(), Some(c.to_string())),
        None => (text.to_string(), None),
    };
    let t = smi_adapters::translate(
        &[("input.yaml".to_string(), specs)],
        catalog.as_deref(),
        mesh,
        &Options::default(),
    );
    for d in &t.diagnostics {
        let _ = d.to_string();
    }
    if t.complete() && !t.resources.is_empty() {
        let yaml = t.to_yaml();
        let back = serde_norway::Deserializer::from_str(&yaml)
            .map(serde_json::Value::deserialize)
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}\n{yaml}"));
        assert_eq!(
            back, t.resources,
            "rendered YAML reads back differently:\n{yaml}"
        );
    }
});
