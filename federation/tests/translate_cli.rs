//! `federationctl translate`: offline, YAML on stdout, diagnostics on stderr, exit status.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn corpus(p: &str) -> String {
    format!(
        "{}/../smi-adapters/tests/corpus/{p}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn ctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_federationctl"))
        .args(args)
        .output()
        .expect("run federationctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn translate_renders_yaml_and_reports_remote_backends_through_the_catalog() {
    let (code, out, err) = ctl(&[
        "translate",
        "--mesh",
        "istio",
        "-f",
        &corpus("services.yaml"),
        "-f",
        &corpus("split-v1alpha2-remote/input.yaml"),
        "--catalog",
        &corpus("split-v1alpha2-remote/catalog.json"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n"),
        "{out}"
    );
    assert!(
        out.contains("host: reviews-v2-remote.shop.svc.clusterset.local"),
        "{out}"
    );
    assert!(out.contains("kind: ServiceEntry"), "{out}");
    assert!(err.is_empty(), "{err}");
}

#[test]
fn translate_fails_with_the_field_named_and_json_lists_diagnostics() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {name: s, namespace: shop}\nspec:\n  service: web\n  backends: [{service: a, weight: 0}, {service: b, weight: 0}]\n",
    )
    .unwrap();
    let (code, out, err) = ctl(&[
        "translate",
        "--mesh",
        "gateway-api",
        "-f",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("spec.backends: every weight is zero"), "{err}");

    let (code, out, _) = ctl(&[
        "-o",
        "json",
        "translate",
        "--mesh",
        "istio",
        "-f",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["resources"], serde_json::json!([]));
    assert_eq!(v["diagnostics"][0]["severity"], "error");
    assert_eq!(v["diagnostics"][0]["field"], "spec.backends");

    let (code, _, err) = ctl(&["translate", "--mesh", "nope", "-f", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("--mesh \"nope\""), "{err}");
    let (code, _, err) = ctl(&["translate", "--mesh", "istio", "-f", "/does/not/exist.yaml"]);
    assert_eq!(code, 2);
    assert!(err.contains("/does/not/exist.yaml"), "{err}");
}
