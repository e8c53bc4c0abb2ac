//! Property tests of the HyperLogLog sketches: estimates within 4 standard errors of the true
//! count, and merging commutative, associative and equal to the sketch of the union.

use _normalize::hll::{merge_bytes, standard_error, Sketch, DEFAULT_P, MAX_P};
use proptest::prelude::*;

/// `n` distinct ids (distinct by construction; `seed` makes each set random to the hash).
fn ids(seed: u64, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{seed:x}-{i}")).collect()
}

/// A count from 1 to 1,000,000, log-uniform, so small and large sets are both common.
fn count() -> impl Strategy<Value = usize> {
    (0.0f64..6.0).prop_map(|e| 10f64.powf(e).round().max(1.0) as usize)
}

fn within_4_se(estimate: f64, n: usize, p: u8) {
    let n = n as f64;
    let bound = 4.0 * standard_error(p) * n;
    assert!(
        (estimate - n).abs() <= bound.max(0.5),
        "estimate {estimate} for {n} ids at p={p}: off by {:.4} %, bound {:.4} %",
        (estimate - n).abs() / n * 100.0,
        4.0 * standard_error(p) * 100.0
    );
}

proptest! {
    // A fixed seed: a bound of 4 standard errors still fails now and then for some random set
    // (the error of a 16-register sketch is far from normal), and CI must not flake on it.
    #![proptest_config(ProptestConfig {
        cases: 40,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x616E_616C_7974_6963),
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_estimate_is_within_4_standard_errors(seed in any::<u64>(), n in count()) {
        let s = Sketch::of(DEFAULT_P, ids(seed, n)).unwrap();
        within_4_se(s.estimate(), n, DEFAULT_P);
    }

    #[test]
    fn every_precision_estimates_within_4_standard_errors(
        // From precision 8 (256 registers) up: below, the estimate's spread is not the 1.04/sqrt(m)
        // the bound assumes (16 registers once gave 127 % for 162,635 ids, the bound 104 %).
        seed in any::<u64>(), n in 1usize..200_000, p in 8u8..=MAX_P
    ) {
        let s = Sketch::of(p, ids(seed, n)).unwrap();
        within_4_se(s.estimate(), n, p);
    }

    #[test]
    fn merging_is_commutative_associative_and_the_sketch_of_the_union(
        seed in any::<u64>(), a in count(), b in count(), c in 0usize..3000, overlap in 0usize..2000
    ) {
        let p = DEFAULT_P;
        // Three sets sharing `overlap` ids with one another.
        let shared = ids(seed ^ 1, overlap);
        let set = |k: u64, n: usize| -> Vec<String> {
            ids(seed.wrapping_add(k << 32), n).into_iter().chain(shared.iter().cloned()).collect()
        };
        let (sa, sb, sc) = (set(1, a), set(2, b), set(3, c));
        let bytes = |s: &[String]| Sketch::of(p, s).unwrap().to_bytes();
        let (xa, xb, xc) = (bytes(&sa), bytes(&sb), bytes(&sc));

        let ab = merge_bytes(&[&xa, &xb]).unwrap();
        prop_assert_eq!(&ab, &merge_bytes(&[&xb, &xa]).unwrap());
        let ab_c = merge_bytes(&[&ab, &xc]).unwrap();
        let a_bc = merge_bytes(&[xa.clone(), merge_bytes(&[&xb, &xc]).unwrap()]).unwrap();
        prop_assert_eq!(&ab_c, &a_bc);
        prop_assert_eq!(&ab_c, &merge_bytes(&[&xc, &xa, &xb]).unwrap());

        let union: Vec<String> = sa.iter().chain(&sb).chain(&sc).cloned().collect();
        prop_assert_eq!(&ab_c, &bytes(&union));
        // Merging a sketch with itself changes nothing.
        prop_assert_eq!(&merge_bytes(&[&xa, &xa]).unwrap(), &xa);
        let distinct = a + b + c + overlap;
        within_4_se(Sketch::from_bytes(&ab_c).unwrap().estimate(), distinct, p);
    }
}
