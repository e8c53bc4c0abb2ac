//! HyperLogLog sketches of user ids: built per rollup bucket, merged across buckets and
//! dimension values, estimated once per answer.
//!
//! A sketch of precision `p` (4..=18, default 12) has `m = 2^p` registers; its estimate has
//! a relative standard error of `1.04 / sqrt(m)` (1.625 % at p = 12), [`standard_error`].
//!
//! **Hash.** Each id's UTF-8 bytes are hashed with XXH3-64 (seed 0). The top `p` bits pick a
//! register, the rank is the number of leading zeros of the remaining `64 - p` bits plus one
//! (at most `65 - p`), and a register keeps the largest rank it has seen.
//!
//! **Sparse form.** A sketch of few ids keeps, instead of `m` registers, one entry per
//! distinct register of precision [`SPARSE_P`] = 25 (HLL++'s sparse representation): the
//! top 25 bits of the hash and the rank of the other 39 (1..=40). A bucket with 3 users is
//! then 15 bytes, and its estimate (over 2^25 registers) is near exact. An entry converts to
//! the register of precision `p` it would have set ([`Sparse::to_dense`]), so a sparse
//! sketch turned dense is exactly the dense sketch of the same ids. A sketch is sparse while
//! its entries take no more room than the dense registers (`4 * entries <= m`), dense after:
//! the form is a function of the ids alone, so merging is commutative and associative to the
//! byte and the merge of two sketches is byte for byte the sketch of the union.
//!
//! **Estimate.** Otmar Ertl's improved raw estimator ("New cardinality estimation algorithms
//! for HyperLogLog sketches", 2017, section 4, as Redis uses), over the histogram of register
//! values. It needs neither HLL++'s empirical bias tables nor a switch to linear counting:
//! it is unbiased from one id to far beyond 2^p. The sparse form is estimated the same way,
//! as 2^25 registers.
//!
//! **Byte format, version 1** (all integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version = 1 |
//! | 1 | 1 | precision `p`, 4..=18 |
//! | 2 | 1 | form: 1 = sparse, 2 = dense |
//! | 3 | 4 × n | sparse: n entries `index25 << 6 | rank`, u32, strictly ascending, n <= m/4 |
//! | 3 | m | dense: register `j` (0 = empty, else 1..=65-p), one byte each |
//!
//! Anything else (another version, a precision out of range, a length that does not fit the
//! form, entries out of order or out of range, a register above its maximum, a sparse sketch
//! that should be dense) is refused with an [`HllError`].

use std::fmt;
use xxhash_rust::xxh3::xxh3_64;

/// The byte format's version (the first byte of every sketch).
pub const VERSION: u8 = 1;
/// The precision used when none is given: 4096 registers, 1.625 % standard error.
pub const DEFAULT_P: u8 = 12;
pub const MIN_P: u8 = 4;
pub const MAX_P: u8 = 18;
/// The precision of the sparse form's entries.
pub const SPARSE_P: u8 = 25;

const SPARSE: u8 = 1;
const DENSE: u8 = 2;
const HEADER: usize = 3;

/// Why bytes are not a sketch, or sketches cannot be merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HllError(pub String);

impl fmt::Display for HllError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HllError {}

fn err<T>(message: impl Into<String>) -> Result<T, HllError> {
    Err(HllError(message.into()))
}

/// The relative standard error of an estimate at precision `p`: `1.04 / sqrt(2^p)`.
pub fn standard_error(p: u8) -> f64 {
    1.04 / f64::from(1u32 << p).sqrt()
}

fn check_p(p: u8) -> Result<(), HllError> {
    if (MIN_P..=MAX_P).contains(&p) {
        Ok(())
    } else {
        err(format!("precision must be {MIN_P}..={MAX_P}, got {p}"))
    }
}

/// The sparse entry of a 64-bit hash: its top 25 bits and the rank of the other 39.
fn entry(hash: u64) -> u32 {
    let index = (hash >> (64 - SPARSE_P)) as u32;
    let rest = hash << SPARSE_P;
    let rank = rest.leading_zeros().min(64 - u32::from(SPARSE_P)) + 1;
    index << 6 | rank
}

/// The register (index, rank) at precision `p` that a sparse entry stands for.
fn register(entry: u32, p: u8) -> (usize, u8) {
    let index25 = entry >> 6;
    let rank25 = (entry & 63) as u8;
    let shift = SPARSE_P - p;
    let index = (index25 >> shift) as usize;
    // The hash bits between p and 25: their leading zeros, or, when all zero, the run
    // continues into the 39 bits the entry's own rank counts.
    let between = index25 & ((1 << shift) - 1);
    let rank = if between != 0 {
        (between.leading_zeros() - (32 - u32::from(shift))) as u8 + 1
    } else {
        shift + rank25
    };
    (index, rank)
}

/// A sketch, sparse or dense (see the module's documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sketch {
    p: u8,
    form: Form,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Form {
    /// Strictly ascending entries, one per distinct 25-bit index.
    Sparse(Vec<u32>),
    Dense(Vec<u8>),
}

impl Sketch {
    /// The sketch of no ids.
    pub fn empty(p: u8) -> Result<Self, HllError> {
        check_p(p)?;
        Ok(Self {
            p,
            form: Form::Sparse(Vec::new()),
        })
    }

    /// The sketch of `ids` (their UTF-8 bytes), at precision `p`.
    pub fn of<I, T>(p: u8, ids: I) -> Result<Self, HllError>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        check_p(p)?;
        let mut entries: Vec<u32> = ids
            .into_iter()
            .map(|id| entry(xxh3_64(id.as_ref())))
            .collect();
        entries.sort_unstable();
        // Same index: ascending ranks are adjacent; keep the last (largest) of each run.
        let mut kept: Vec<u32> = Vec::with_capacity(entries.len());
        for e in entries {
            match kept.last_mut() {
                Some(last) if *last >> 6 == e >> 6 => *last = e,
                _ => kept.push(e),
            }
        }
        let mut sketch = Self {
            p,
            form: Form::Sparse(kept),
        };
        sketch.settle();
        Ok(sketch)
    }

    pub fn precision(&self) -> u8 {
        self.p
    }

    pub fn is_sparse(&self) -> bool {
        matches!(self.form, Form::Sparse(_))
    }

    fn registers(&self) -> usize {
        1 << self.p
    }

    /// Dense once the entries take more room than the registers would.
    fn settle(&mut self) {
        if let Form::Sparse(entries) = &self.form {
            if 4 * entries.len() > self.registers() {
                self.form = Form::Dense(to_dense(entries, self.p));
            }
        }
    }

    /// Adds `other`'s ids to this sketch (a register-wise maximum); both must have the same
    /// precision.
    pub fn merge(&mut self, other: &Sketch) -> Result<(), HllError> {
        if other.p != self.p {
            return err(format!(
                "cannot merge sketches of precision {} and {}",
                self.p, other.p
            ));
        }
        let p = self.p;
        match (&mut self.form, &other.form) {
            (Form::Sparse(a), Form::Sparse(b)) => *a = union(a, b),
            (Form::Dense(a), Form::Dense(b)) => max_into(a, b),
            (Form::Dense(a), Form::Sparse(b)) => sparse_into(a, b, p),
            (Form::Sparse(a), Form::Dense(b)) => {
                let mut dense = b.clone();
                sparse_into(&mut dense, a, p);
                self.form = Form::Dense(dense);
            }
        }
        self.settle();
        Ok(())
    }

    /// The estimated number of distinct ids.
    pub fn estimate(&self) -> f64 {
        match &self.form {
            Form::Sparse(entries) => {
                let q = 64 - usize::from(SPARSE_P);
                let mut hist = vec![0u64; q + 2];
                for e in entries {
                    hist[(e & 63) as usize] += 1;
                }
                hist[0] = (1u64 << SPARSE_P) - entries.len() as u64;
                ertl(&hist, 1u64 << SPARSE_P)
            }
            Form::Dense(regs) => {
                let q = 64 - usize::from(self.p);
                let mut hist = vec![0u64; q + 2];
                for &r in regs {
                    hist[usize::from(r)] += 1;
                }
                ertl(&hist, regs.len() as u64)
            }
        }
    }

    /// The version-1 bytes of this sketch.
    pub fn to_bytes(&self) -> Vec<u8> {
        match &self.form {
            Form::Sparse(entries) => {
                let mut out = Vec::with_capacity(HEADER + 4 * entries.len());
                out.extend_from_slice(&[VERSION, self.p, SPARSE]);
                for e in entries {
                    out.extend_from_slice(&e.to_le_bytes());
                }
                out
            }
            Form::Dense(regs) => {
                let mut out = Vec::with_capacity(HEADER + regs.len());
                out.extend_from_slice(&[VERSION, self.p, DENSE]);
                out.extend_from_slice(regs);
                out
            }
        }
    }

    /// A sketch from its bytes, every field checked.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, HllError> {
        if bytes.len() < HEADER {
            return err(format!(
                "a sketch has at least {HEADER} bytes, got {}",
                bytes.len()
            ));
        }
        let (version, p, form) = (bytes[0], bytes[1], bytes[2]);
        if version != VERSION {
            return err(format!(
                "unknown sketch version {version} (expected {VERSION})"
            ));
        }
        check_p(p)?;
        let body = &bytes[HEADER..];
        let m = 1usize << p;
        match form {
            SPARSE => {
                if body.len() % 4 != 0 || body.len() > m {
                    return err(format!(
                        "a sparse sketch of precision {p} cannot hold {} bytes",
                        body.len()
                    ));
                }
                let entries: Vec<u32> = body
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                let max_rank = 65 - u32::from(SPARSE_P);
                for (i, &e) in entries.iter().enumerate() {
                    let rank = e & 63;
                    if e >> 31 != 0 || rank == 0 || rank > max_rank {
                        return err(format!("sparse entry {i} is out of range"));
                    }
                    if i > 0 && entries[i - 1] >> 6 >= e >> 6 {
                        return err(format!("sparse entry {i} is not in ascending order"));
                    }
                }
                Ok(Self {
                    p,
                    form: Form::Sparse(entries),
                })
            }
            DENSE => {
                if body.len() != m {
                    return err(format!(
                        "a dense sketch of precision {p} has {m} registers, got {}",
                        body.len()
                    ));
                }
                let max_rank = 65 - p;
                if let Some(j) = body.iter().position(|&r| r > max_rank) {
                    return err(format!("register {j} is above {max_rank}"));
                }
                let sketch = Self {
                    p,
                    form: Form::Dense(body.to_vec()),
                };
                Ok(sketch)
            }
            other => err(format!("unknown sketch form {other}")),
        }
    }
}

/// The merge of the sketches in `all` (at least one, all of one precision), as bytes.
pub fn merge_bytes<T: AsRef<[u8]>>(all: &[T]) -> Result<Vec<u8>, HllError> {
    let Some(first) = all.first() else {
        return err("no sketch to merge");
    };
    let mut acc = Sketch::from_bytes(first.as_ref())?;
    for bytes in &all[1..] {
        acc.merge(&Sketch::from_bytes(bytes.as_ref())?)?;
    }
    Ok(acc.to_bytes())
}

fn to_dense(entries: &[u32], p: u8) -> Vec<u8> {
    let mut regs = vec![0u8; 1 << p];
    sparse_into(&mut regs, entries, p);
    regs
}

fn sparse_into(regs: &mut [u8], entries: &[u32], p: u8) {
    for &e in entries {
        let (j, rank) = register(e, p);
        if regs[j] < rank {
            regs[j] = rank;
        }
    }
}

fn max_into(a: &mut [u8], b: &[u8]) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x = (*x).max(y);
    }
}

/// The union of two strictly ascending entry lists, the larger rank per index.
fn union(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i], b[j]);
        match (x >> 6).cmp(&(y >> 6)) {
            std::cmp::Ordering::Less => {
                out.push(x);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(y);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(x.max(y));
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// Ertl's improved raw estimate from `hist[k]` = registers of value k (k = 0..=q+1) out of
/// `m`: `alpha_inf * m^2 / (m * sigma(C0/m) + sum_k C_k 2^-k + m * tau(1 - C_{q+1}/m) 2^-q)`.
fn ertl(hist: &[u64], m: u64) -> f64 {
    let q = hist.len() - 2;
    let mf = m as f64;
    if hist[0] == m {
        return 0.0;
    }
    let mut z = mf * tau(1.0 - hist[q + 1] as f64 / mf);
    for k in (1..=q).rev() {
        z += hist[k] as f64;
        z *= 0.5;
    }
    z += mf * sigma(hist[0] as f64 / mf);
    let alpha_inf = 0.5 / std::f64::consts::LN_2;
    alpha_inf * mf * mf / z
}

fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let (mut y, mut z) = (1.0, x);
    loop {
        x *= x;
        let before = z;
        z += x * y;
        y += y;
        if z == before {
            return z;
        }
    }
}

fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let (mut y, mut z) = (1.0, 1.0 - x);
    loop {
        x = x.sqrt();
        let before = z;
        y *= 0.5;
        z -= (1.0 - x) * (1.0 - x) * y;
        if z == before {
            return z / 3.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}-{i}")).collect()
    }

    #[test]
    fn a_bucket_of_three_users_is_fifteen_bytes_and_counts_three() {
        let s = Sketch::of(DEFAULT_P, ["u1", "u2", "u3", "u2"]).unwrap();
        assert!(s.is_sparse());
        assert_eq!(s.to_bytes().len(), 3 + 3 * 4);
        assert!((s.estimate() - 3.0).abs() < 0.01, "{}", s.estimate());
    }

    #[test]
    fn the_empty_sketch_estimates_zero() {
        let s = Sketch::of(DEFAULT_P, Vec::<&str>::new()).unwrap();
        assert_eq!(s.to_bytes(), vec![VERSION, DEFAULT_P, SPARSE]);
        assert_eq!(s.estimate(), 0.0);
        assert_eq!(s, Sketch::empty(DEFAULT_P).unwrap());
    }

    #[test]
    fn a_sketch_goes_dense_when_the_entries_outgrow_the_registers() {
        let p = 12;
        let small = Sketch::of(p, ids("a", 900)).unwrap();
        assert!(small.is_sparse());
        let large = Sketch::of(p, ids("a", 5000)).unwrap();
        assert!(!large.is_sparse());
        assert_eq!(large.to_bytes().len(), 3 + 4096);
    }

    #[test]
    fn a_sparse_sketch_turned_dense_equals_the_dense_sketch_of_its_ids() {
        // Registers computed straight from the hashes at precision p.
        for p in [MIN_P, 9, DEFAULT_P, MAX_P] {
            let items = ids("x", 3000);
            let mut direct = vec![0u8; 1 << p];
            for id in &items {
                let h = xxh3_64(id.as_bytes());
                let j = (h >> (64 - p)) as usize;
                let rank = ((h << p).leading_zeros().min(64 - u32::from(p)) + 1) as u8;
                direct[j] = direct[j].max(rank);
            }
            let entries: Vec<u32> = {
                let mut v: Vec<u32> = items.iter().map(|i| entry(xxh3_64(i.as_bytes()))).collect();
                v.sort_unstable();
                v
            };
            assert_eq!(to_dense(&entries, p), direct, "p={p}");
        }
    }

    #[test]
    fn bytes_round_trip_and_bad_bytes_are_refused() {
        for n in [0, 5, 2000] {
            let s = Sketch::of(DEFAULT_P, ids("r", n)).unwrap();
            assert_eq!(Sketch::from_bytes(&s.to_bytes()).unwrap(), s);
        }
        let good = Sketch::of(DEFAULT_P, ids("r", 3)).unwrap().to_bytes();
        let mut bad_version = good.clone();
        bad_version[0] = 2;
        let mut bad_p = good.clone();
        bad_p[1] = 19;
        let mut unordered = good.clone();
        unordered[3..7].copy_from_slice(&u32::MAX.to_le_bytes());
        for bad in [
            &good[..2],
            &good[..5],
            &bad_version[..],
            &bad_p[..],
            &unordered[..],
        ] {
            assert!(Sketch::from_bytes(bad).is_err(), "{bad:?}");
        }
        let mut dense = Sketch::of(4, ids("r", 100)).unwrap().to_bytes();
        assert_eq!(dense.len(), 3 + 16);
        dense[3] = 62;
        assert!(Sketch::from_bytes(&dense).is_err());
    }

    #[test]
    fn sketches_of_other_precisions_do_not_merge() {
        let a = Sketch::of(10, ["a"]).unwrap();
        let b = Sketch::of(12, ["a"]).unwrap();
        assert!(merge_bytes(&[a.to_bytes(), b.to_bytes()]).is_err());
        assert!(merge_bytes::<Vec<u8>>(&[]).is_err());
        assert!(Sketch::empty(3).is_err() && Sketch::empty(19).is_err());
    }

    #[test]
    fn the_standard_error_is_1_04_over_the_root_of_m() {
        assert!((standard_error(12) - 0.01625).abs() < 1e-9);
        assert!((standard_error(14) - 0.008125).abs() < 1e-9);
    }
}
