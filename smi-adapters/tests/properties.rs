//! Property tests through the whole translation: for any valid weights and any order of the
//! backends, the rendered Istio percentages sum to 100, zero weights get no share, each share
//! is within a point of the exact one, and the output of every mesh does not depend on the
//! order.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use smi_adapters::render::{Mesh, Options};

fn input(backends: &[(usize, u64)]) -> Vec<(String, String)> {
    let mut docs = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {ports: [{name: http, port: 8080}]}\n",
    );
    for (i, _) in backends {
        docs.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: web-v{i}, namespace: shop}}\nspec: {{ports: [{{name: http, port: 8080}}]}}\n"
        ));
    }
    docs.push_str("---\napiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {name: web, namespace: shop}\nspec:\n  service: web\n  backends:\n");
    for (i, w) in backends {
        docs.push_str(&format!("  - {{service: web-v{i}, weight: {w}}}\n"));
    }
    vec![("split.yaml".to_string(), docs)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn shares_are_exact_to_a_point_and_independent_of_order(
        weights in prop::collection::vec(0u64..10_000, 1..8),
        seed in any::<u64>(),
    ) {
        prop_assume!(weights.iter().any(|w| *w > 0));
        let backends: Vec<(usize, u64)> = weights.iter().copied().enumerate().collect();
        // A permutation from the seed.
        let mut shuffled = backends.clone();
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        for mesh in [Mesh::Istio, Mesh::GatewayApi, Mesh::Linkerd, Mesh::Consul, Mesh::Kuma] {
            let a = smi_adapters::translate(&input(&backends), None, mesh, &Options::default());
            let b = smi_adapters::translate(&input(&shuffled), None, mesh, &Options::default());
            prop_assert!(a.complete(), "{:?}: {:?}", mesh, a.diagnostics);
            prop_assert_eq!(a.to_yaml(), b.to_yaml(), "{:?}", mesh);
        }
        let t = smi_adapters::translate(&input(&backends), None, Mesh::Istio, &Options::default());
        let route = t.resources[0]["spec"]["http"][0]["route"].as_array().unwrap().clone();
        let total: u64 = weights.iter().sum();
        let mut sum = 0;
        for (i, w) in &backends {
            let host = format!("web-v{i}.shop.svc.cluster.local");
            let got = route
                .iter()
                .find(|r| r["destination"]["host"] == host.as_str())
                .map_or(0, |r| r["weight"].as_u64().unwrap());
            if *w == 0 {
                prop_assert_eq!(got, 0, "zero weight got a share");
            }
            let exact = *w as f64 * 100.0 / total as f64;
            prop_assert!((got as f64 - exact).abs() < 1.0, "{} vs {}", got, exact);
            sum += got;
        }
        prop_assert_eq!(sum, 100);
    }
}
