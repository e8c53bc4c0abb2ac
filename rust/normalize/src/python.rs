//! The `analytics._normalize` module: thin bindings over the plain-Rust core.
//!
//! Every entry point copies nothing it can borrow and detaches from the interpreter
//! (releases the GIL) for the whole of its work.

use crate::columns::{self, Column};
use crate::error::ErrorCode;
use crate::{compat, event, hll, hll_group, rebuild, signature, Limits, Normalized};
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pybacked::{PyBackedBytes, PyBackedStr};
use pyo3::types::{PyBytes, PyList, PyTuple};

create_exception!(
    _normalize,
    NormalizeError,
    PyValueError,
    "A whole body was refused; `.code` says why, `.status` is its HTTP status."
);
create_exception!(
    _normalize,
    SignatureError,
    PyValueError,
    "A signature check failed; `.code` says why, `.status` is its HTTP status."
);

fn coded<E: pyo3::PyTypeInfo>(py: Python<'_>, code: ErrorCode, message: &str) -> PyErr {
    let err = PyErr::new::<E, _>((code.as_str(), message.to_owned()));
    // `.code` and `.status` on the instance, so callers need not dig in `.args` nor keep
    // a second table of statuses.
    let value = err.value(py);
    if let Err(e) = value
        .setattr("code", code.as_str())
        .and_then(|()| value.setattr("status", code.status()))
    {
        return e;
    }
    err
}

/// The outcome of one body: counts, per-event rejections and the COPY payload.
#[pyclass(module = "analytics._normalize", frozen)]
pub struct NormalizedBatch {
    #[pyo3(get)]
    accepted: usize,
    #[pyo3(get)]
    total: usize,
    #[pyo3(get)]
    rejected: Vec<(usize, &'static str, String)>,
    #[pyo3(get)]
    copy_data: Py<PyBytes>,
    #[pyo3(get)]
    identities: Vec<(String, String)>,
}

#[pymethods]
impl NormalizedBatch {
    fn __repr__(&self) -> String {
        format!(
            "NormalizedBatch(accepted={}, total={}, rejected={})",
            self.accepted,
            self.total,
            self.rejected.len()
        )
    }
}

/// Validates, normalizes and COPY-encodes every event of `body`, with the GIL released.
#[pyfunction]
#[pyo3(signature = (body, received_at_us, *, customer_id = "", content_encoding = None, ndjson = false, limits = None, signed_at = None))]
#[allow(clippy::too_many_arguments)]
fn normalize_batch(
    py: Python<'_>,
    body: PyBackedBytes,
    received_at_us: i64,
    customer_id: &str,
    content_encoding: Option<&str>,
    ndjson: bool,
    limits: Option<&Limits>,
    signed_at: Option<i64>,
) -> PyResult<NormalizedBatch> {
    let limits = limits.copied().unwrap_or_default();
    let result = py.detach(|| {
        crate::normalize_receipt(
            &body,
            received_at_us,
            customer_id,
            content_encoding,
            ndjson,
            &limits,
            signed_at,
        )
    });
    let Normalized {
        accepted,
        rejected,
        copy_data,
        total,
    } = result.map_err(|e| coded::<NormalizeError>(py, e.code, &e.message))?;
    Ok(NormalizedBatch {
        accepted,
        total,
        rejected: rejected
            .into_iter()
            .map(|r| (r.index, r.code.as_str(), r.message))
            .collect(),
        copy_data: PyBytes::new(py, &copy_data).unbind(),
        identities: Vec::new(),
    })
}

fn dialect(name: &str) -> PyResult<compat::Dialect> {
    compat::Dialect::parse(name)
        .ok_or_else(|| PyValueError::new_err(format!("unknown dialect {name:?}")))
}

/// `normalize_batch` for a body in another product's format (`dialect`: `"segment"`,
/// `"segment/<call>"` or `"posthog"`), with the GIL released; also returns the
/// (anonymous id, user id) links the body made, in `identities`.
#[pyfunction]
#[pyo3(signature = (body, received_at_us, *, dialect, customer_id = "", content_encoding = None, limits = None))]
fn normalize_compat(
    py: Python<'_>,
    body: PyBackedBytes,
    received_at_us: i64,
    dialect: &str,
    customer_id: &str,
    content_encoding: Option<&str>,
    limits: Option<&Limits>,
) -> PyResult<NormalizedBatch> {
    let limits = limits.copied().unwrap_or_default();
    let dialect = self::dialect(dialect)?;
    let result = py.detach(|| {
        compat::normalize(
            &body,
            received_at_us,
            customer_id,
            content_encoding,
            dialect,
            &limits,
        )
    });
    let compat::Compat {
        normalized,
        identities,
    } = result.map_err(|e| coded::<NormalizeError>(py, e.code, &e.message))?;
    Ok(NormalizedBatch {
        accepted: normalized.accepted,
        total: normalized.total,
        rejected: normalized
            .rejected
            .into_iter()
            .map(|r| (r.index, r.code.as_str(), r.message))
            .collect(),
        copy_data: PyBytes::new(py, &normalized.copy_data).unbind(),
        identities,
    })
}

/// The API key a body in `dialect` carries, if any (with the GIL released); raises
/// `NormalizeError` for a body that cannot be framed.
#[pyfunction]
#[pyo3(signature = (body, *, dialect, content_encoding = None, limits = None))]
fn compat_key(
    py: Python<'_>,
    body: PyBackedBytes,
    dialect: &str,
    content_encoding: Option<&str>,
    limits: Option<&Limits>,
) -> PyResult<Option<String>> {
    let limits = limits.copied().unwrap_or_default();
    let dialect = self::dialect(dialect)?;
    py.detach(|| compat::body_key(&body, content_encoding, dialect, &limits))
        .map_err(|e| coded::<NormalizeError>(py, e.code, &e.message))
}

/// One signing secret, or several (a key in the middle of a rotation).
#[derive(FromPyObject)]
enum Secrets {
    One(PyBackedBytes),
    Many(Vec<PyBackedBytes>),
}

/// Checks an `X-Signature` header against `body` and returns its signing time `t`; raises
/// `SignatureError` with a code. `secret` is bytes, or a sequence of bytes any of which
/// may have made the signature.
#[pyfunction]
#[pyo3(signature = (secret, header, body, now_s, tolerance_s = 300))]
fn verify_signature(
    py: Python<'_>,
    secret: Secrets,
    header: &str,
    body: PyBackedBytes,
    now_s: i64,
    tolerance_s: i64,
) -> PyResult<i64> {
    let secrets: Vec<&[u8]> = match &secret {
        Secrets::One(one) => vec![one],
        Secrets::Many(many) => many.iter().map(|s| &s[..]).collect(),
    };
    py.detach(|| signature::verify_any(&secrets, header, &body, now_s, tolerance_s))
        .map_err(|e| coded::<SignatureError>(py, e.code(), &e.message()))
}

/// An event name as ingestion stores it (trimmed, whitespace collapsed, lowercased), so
/// queries match what was written; raises ValueError for a name ingestion would reject.
#[pyfunction]
fn normalize_event_name(name: &str) -> PyResult<String> {
    let j = crate::json::J::Str(name.into());
    event::normalize_name(Some(&j), &Limits::default())
        .map_err(|(_, message)| PyValueError::new_err(message))
}

/// A valid `X-Signature` header value for `body` signed at unix time `t`.
#[pyfunction]
fn sign(py: Python<'_>, secret: PyBackedBytes, body: PyBackedBytes, t: i64) -> String {
    py.detach(|| signature::sign(&secret, &body, t))
}

/// The values of concatenated COPY tuples as one list per column, in `COPY_SCHEMA` order
/// (text as str or None, timestamptz as µs since the Unix epoch, double precision as float
/// or None, jsonb as its JSON text, smallint as int); ValueError when malformed.
#[pyfunction]
fn copy_columns<'py>(py: Python<'py>, data: PyBackedBytes) -> PyResult<Bound<'py, PyTuple>> {
    let columns = columns::decode(&data).map_err(PyValueError::new_err)?;
    let lists = columns
        .into_iter()
        .map(|column| match column {
            Column::Text(v) => PyList::new(py, v),
            Column::Timestamp(v) => PyList::new(py, v),
            Column::Float(v) => PyList::new(py, v),
            Column::Json(v) => PyList::new(py, v),
            Column::SmallInt(v) => PyList::new(py, v),
        })
        .collect::<PyResult<Vec<_>>>()?;
    PyTuple::new(py, lists)
}

/// A precision as `hll` takes it; ValueError (not OverflowError) for any int out of range.
fn hll_precision(precision: i64) -> PyResult<u8> {
    u8::try_from(precision)
        .ok()
        .filter(|p| (hll::MIN_P..=hll::MAX_P).contains(p))
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "precision must be {}..={}, got {precision}",
                hll::MIN_P,
                hll::MAX_P
            ))
        })
}

/// The HyperLogLog sketch (hll.rs, byte format version 1) of `user_ids` at `precision`.
#[pyfunction]
#[pyo3(signature = (user_ids, precision = i64::from(hll::DEFAULT_P)))]
fn hll_build(py: Python<'_>, user_ids: Vec<PyBackedStr>, precision: i64) -> PyResult<Py<PyBytes>> {
    let precision = hll_precision(precision)?;
    let bytes = py
        .detach(|| hll::Sketch::of(precision, user_ids.iter().map(|s| s.as_bytes())))
        .map(|sketch| sketch.to_bytes())
        .map_err(|e| PyValueError::new_err(e.0))?;
    Ok(PyBytes::new(py, &bytes).unbind())
}

/// The rollup job's sketches of `rows_json` (hll_group.rs: one JSON row per folded event,
/// `[customer, name, hour, user, [values of dims]]`), in key order:
/// `(customer, name, dim, dim_value, hour, sketch)`, dim '' the total and `!d` the events
/// without `d`. Parsing and hashing run without the GIL.
#[pyfunction]
#[pyo3(name = "hll_group", signature = (rows_json, dims, precision = i64::from(hll::DEFAULT_P)))]
#[allow(clippy::type_complexity)]
fn hll_group_users(
    py: Python<'_>,
    rows_json: PyBackedStr,
    dims: Vec<String>,
    precision: i64,
) -> PyResult<Vec<(i64, String, String, String, i64, Py<PyBytes>)>> {
    let precision = hll_precision(precision)?;
    let groups = py
        .detach(|| {
            hll_group::group_users(&rows_json, &dims, precision).map(|gs| {
                gs.into_iter()
                    .map(|(k, s)| (k, s.to_bytes()))
                    .collect::<Vec<_>>()
            })
        })
        .map_err(|e| PyValueError::new_err(e.0))?;
    Ok(groups
        .into_iter()
        .map(|((c, n, d, v, h), bytes)| (c, n, d, v, h, PyBytes::new(py, &bytes).unbind()))
        .collect())
}

/// A rebuild's rollups of `rows_json` (rebuild.rs: one JSON row per event, `[customer,
/// name, minute, value, user, [values of dims]]`, dims sorted): the binary COPY tuples of its
/// `rollup_minute` rows (minutes from `minute_since`, Unix seconds, on), `rollup_hour` rows
/// and `rollup_pair_hour` rows (each in key order, no header or trailer), and its sketches
/// as `hll_group` gives them. Runs without the GIL.
#[pyfunction]
#[pyo3(signature = (rows_json, dims, minute_since, precision = i64::from(hll::DEFAULT_P)))]
#[allow(clippy::type_complexity)]
fn rebuild_rows(
    py: Python<'_>,
    rows_json: PyBackedStr,
    dims: Vec<String>,
    minute_since: i64,
    precision: i64,
) -> PyResult<(
    Py<PyBytes>,
    Py<PyBytes>,
    Py<PyBytes>,
    Vec<(i64, String, String, String, i64, Py<PyBytes>)>,
)> {
    let precision = hll_precision(precision)?;
    let (minutes, hours, pairs, sketches) = py
        .detach(|| {
            rebuild::rebuild_rows(&rows_json, &dims, precision, minute_since).map(|r| {
                let sketches: Vec<_> = r
                    .sketches
                    .into_iter()
                    .map(|(k, s)| (k, s.to_bytes()))
                    .collect();
                (r.minutes, r.hours, r.pairs, sketches)
            })
        })
        .map_err(|e| PyValueError::new_err(e.0))?;
    let sketches = sketches
        .into_iter()
        .map(|((c, n, d, v, h), bytes)| (c, n, d, v, h, PyBytes::new(py, &bytes).unbind()))
        .collect();
    let bytes = |b: Vec<u8>| PyBytes::new(py, &b).unbind();
    Ok((bytes(minutes), bytes(hours), bytes(pairs), sketches))
}

/// The merge of `sketches` (at least one, all of one precision): the sketch of the union.
#[pyfunction]
fn hll_merge(py: Python<'_>, sketches: Vec<PyBackedBytes>) -> PyResult<Py<PyBytes>> {
    let bytes = py
        .detach(|| hll::merge_bytes(&sketches))
        .map_err(|e| PyValueError::new_err(e.0))?;
    Ok(PyBytes::new(py, &bytes).unbind())
}

/// The estimated number of distinct ids in `sketch`.
#[pyfunction]
fn hll_estimate(py: Python<'_>, sketch: PyBackedBytes) -> PyResult<f64> {
    py.detach(|| hll::Sketch::from_bytes(&sketch).map(|s| s.estimate()))
        .map_err(|e| PyValueError::new_err(e.0))
}

/// The relative standard error of an estimate at `precision`: 1.04 / sqrt(2^precision).
#[pyfunction]
#[pyo3(signature = (precision = i64::from(hll::DEFAULT_P)))]
fn hll_standard_error(precision: i64) -> PyResult<f64> {
    Ok(hll::standard_error(hll_precision(precision)?))
}

#[pymodule]
fn _normalize(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("NormalizeError", py.get_type::<NormalizeError>())?;
    m.add("SignatureError", py.get_type::<SignatureError>())?;
    m.add_class::<Limits>()?;
    m.add_class::<NormalizedBatch>()?;
    m.add_function(wrap_pyfunction!(normalize_batch, m)?)?;
    m.add_function(wrap_pyfunction!(normalize_compat, m)?)?;
    m.add_function(wrap_pyfunction!(compat_key, m)?)?;
    m.add_function(wrap_pyfunction!(verify_signature, m)?)?;
    m.add_function(wrap_pyfunction!(sign, m)?)?;
    m.add_function(wrap_pyfunction!(normalize_event_name, m)?)?;
    m.add_function(wrap_pyfunction!(copy_columns, m)?)?;
    m.add_function(wrap_pyfunction!(hll_build, m)?)?;
    m.add_function(wrap_pyfunction!(hll_group_users, m)?)?;
    m.add_function(wrap_pyfunction!(hll_merge, m)?)?;
    m.add_function(wrap_pyfunction!(rebuild_rows, m)?)?;
    m.add_function(wrap_pyfunction!(hll_estimate, m)?)?;
    m.add_function(wrap_pyfunction!(hll_standard_error, m)?)?;
    m.add("HLL_DEFAULT_PRECISION", hll::DEFAULT_P)?;
    m.add("HLL_VERSION", hll::VERSION)?;
    m.add("TS_CLAMPED", event::TS_CLAMPED)?;
    m.add("TS_SKEW_CORRECTED", event::TS_SKEW_CORRECTED)?;
    m.add("TS_DEFAULTED", event::TS_DEFAULTED)?;
    m.add("DEDUP_FINGERPRINT", event::DEDUP_FINGERPRINT)?;
    m.add("MAX_ABS_VALUE", event::MAX_ABS_VALUE)?;
    let codes = ErrorCode::ALL.iter().map(|c| (c.as_str(), c.status()));
    m.add("ERROR_CODES", PyTuple::new(py, codes)?)?;
    m.add("COPY_SCHEMA", PyTuple::new(py, event::COPY_SCHEMA)?)?;
    Ok(())
}
