//! The `analytics._normalize` module: thin bindings over the plain-Rust core.
//!
//! Every entry point copies nothing it can borrow and detaches from the interpreter
//! (releases the GIL) for the whole of its work.

use crate::limits::Limits as CoreLimits;
use crate::{signature, Normalized};
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::PyBytes;

create_exception!(
    _normalize,
    NormalizeError,
    PyValueError,
    "A whole body was refused; `.code` says why."
);
create_exception!(
    _normalize,
    SignatureError,
    PyValueError,
    "A signature check failed; `.code` says why."
);

fn coded<E: pyo3::PyTypeInfo>(py: Python<'_>, code: &str, message: &str) -> PyErr {
    let err = PyErr::new::<E, _>((code.to_owned(), message.to_owned()));
    // `.code` on the instance, so callers need not dig in `.args`.
    if let Err(e) = err.value(py).setattr("code", code) {
        return e;
    }
    err
}

/// Size and complexity caps (see the README's table for the defaults).
#[pyclass(module = "analytics._normalize", frozen, get_all, eq)]
#[derive(Clone, PartialEq)]
pub struct Limits {
    max_body_bytes: usize,
    max_ratio: usize,
    max_events: usize,
    max_event_bytes: usize,
    max_name_chars: usize,
    max_event_id_chars: usize,
    max_user_id_chars: usize,
    max_property_depth: usize,
    max_properties: usize,
    max_key_chars: usize,
    max_string_bytes: usize,
    max_future_us: i64,
}

impl From<CoreLimits> for Limits {
    fn from(l: CoreLimits) -> Self {
        Limits {
            max_body_bytes: l.max_body_bytes,
            max_ratio: l.max_ratio,
            max_events: l.max_events,
            max_event_bytes: l.max_event_bytes,
            max_name_chars: l.max_name_chars,
            max_event_id_chars: l.max_event_id_chars,
            max_user_id_chars: l.max_user_id_chars,
            max_property_depth: l.max_property_depth,
            max_properties: l.max_properties,
            max_key_chars: l.max_key_chars,
            max_string_bytes: l.max_string_bytes,
            max_future_us: l.max_future_us,
        }
    }
}

impl From<&Limits> for CoreLimits {
    fn from(l: &Limits) -> Self {
        CoreLimits {
            max_body_bytes: l.max_body_bytes,
            max_ratio: l.max_ratio,
            max_events: l.max_events,
            max_event_bytes: l.max_event_bytes,
            max_name_chars: l.max_name_chars,
            max_event_id_chars: l.max_event_id_chars,
            max_user_id_chars: l.max_user_id_chars,
            max_property_depth: l.max_property_depth,
            max_properties: l.max_properties,
            max_key_chars: l.max_key_chars,
            max_string_bytes: l.max_string_bytes,
            max_future_us: l.max_future_us,
        }
    }
}

#[pymethods]
impl Limits {
    #[new]
    #[pyo3(signature = (**overrides))]
    fn new(overrides: Option<&Bound<'_, pyo3::types::PyDict>>) -> PyResult<Self> {
        let defaults = Limits::from(CoreLimits::default());
        let Some(overrides) = overrides else {
            return Ok(defaults);
        };
        let py = overrides.py();
        let merged = Py::new(py, defaults)?.into_bound(py).into_any();
        let mut fields = CoreLimits::default();
        for (key, value) in overrides.iter() {
            let key: String = key.extract()?;
            // Reading the default proves the name is a field; unknown names are a TypeError.
            if merged.getattr(key.as_str()).is_err() {
                return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                    "Limits() got an unexpected keyword argument {key:?}"
                )));
            }
            match key.as_str() {
                "max_body_bytes" => fields.max_body_bytes = value.extract()?,
                "max_ratio" => fields.max_ratio = value.extract()?,
                "max_events" => fields.max_events = value.extract()?,
                "max_event_bytes" => fields.max_event_bytes = value.extract()?,
                "max_name_chars" => fields.max_name_chars = value.extract()?,
                "max_event_id_chars" => fields.max_event_id_chars = value.extract()?,
                "max_user_id_chars" => fields.max_user_id_chars = value.extract()?,
                "max_property_depth" => fields.max_property_depth = value.extract()?,
                "max_properties" => fields.max_properties = value.extract()?,
                "max_key_chars" => fields.max_key_chars = value.extract()?,
                "max_string_bytes" => fields.max_string_bytes = value.extract()?,
                "max_future_us" => fields.max_future_us = value.extract()?,
                _ => unreachable!("checked above"),
            }
        }
        Ok(Limits::from(fields))
    }

    fn __repr__(&self) -> String {
        format!(
            "Limits(max_body_bytes={}, max_ratio={}, max_events={}, max_event_bytes={}, \
             max_name_chars={}, max_event_id_chars={}, max_user_id_chars={}, \
             max_property_depth={}, max_properties={}, max_key_chars={}, \
             max_string_bytes={}, max_future_us={})",
            self.max_body_bytes,
            self.max_ratio,
            self.max_events,
            self.max_event_bytes,
            self.max_name_chars,
            self.max_event_id_chars,
            self.max_user_id_chars,
            self.max_property_depth,
            self.max_properties,
            self.max_key_chars,
            self.max_string_bytes,
            self.max_future_us
        )
    }
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
#[pyo3(signature = (body, received_at_us, *, customer_id = "", content_encoding = None, ndjson = false, limits = None))]
fn normalize_batch(
    py: Python<'_>,
    body: PyBackedBytes,
    received_at_us: i64,
    customer_id: &str,
    content_encoding: Option<&str>,
    ndjson: bool,
    limits: Option<&Limits>,
) -> PyResult<NormalizedBatch> {
    let limits = limits.map(CoreLimits::from).unwrap_or_default();
    let result = py.detach(|| {
        crate::normalize_batch(
            &body,
            received_at_us,
            customer_id,
            content_encoding,
            ndjson,
            &limits,
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
            .map(|r| (r.index, r.code, r.message))
            .collect(),
        copy_data: PyBytes::new(py, &copy_data).unbind(),
    })
}

/// Checks an `X-Signature` header against `body`; raises `SignatureError` with a code.
#[pyfunction]
#[pyo3(signature = (secret, header, body, now_s, tolerance_s = 300))]
fn verify_signature(
    py: Python<'_>,
    secret: PyBackedBytes,
    header: &str,
    body: PyBackedBytes,
    now_s: i64,
    tolerance_s: i64,
) -> PyResult<()> {
    py.detach(|| signature::verify(&secret, header, &body, now_s, tolerance_s))
        .map_err(|e| coded::<SignatureError>(py, e.code(), e.message()))
}

/// An event name as ingestion stores it (trimmed, whitespace collapsed, lowercased), so
/// queries match what was written; raises ValueError for a name ingestion would reject.
#[pyfunction]
fn normalize_event_name(name: &str) -> PyResult<String> {
    let j = crate::json::J::Str(name.into());
    crate::event::normalize_name(Some(&j), &CoreLimits::default())
        .map_err(|(_, message)| PyValueError::new_err(message))
}

/// A valid `X-Signature` header value for `body` signed at unix time `t`.
#[pyfunction]
fn sign(py: Python<'_>, secret: PyBackedBytes, body: PyBackedBytes, t: i64) -> String {
    py.detach(|| signature::sign(&secret, &body, t))
}

#[pymodule]
fn _normalize(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("NormalizeError", py.get_type::<NormalizeError>())?;
    m.add("SignatureError", py.get_type::<SignatureError>())?;
    m.add_class::<Limits>()?;
    m.add_class::<NormalizedBatch>()?;
    m.add_function(wrap_pyfunction!(normalize_batch, m)?)?;
    m.add_function(wrap_pyfunction!(verify_signature, m)?)?;
    m.add_function(wrap_pyfunction!(sign, m)?)?;
    m.add_function(wrap_pyfunction!(normalize_event_name, m)?)?;
    m.add("TS_CLAMPED", crate::event::TS_CLAMPED)?;
    m.add("TS_SKEW_CORRECTED", crate::event::TS_SKEW_CORRECTED)?;
    m.add("TS_DEFAULTED", crate::event::TS_DEFAULTED)?;
    m.add("DEDUP_FINGERPRINT", crate::event::DEDUP_FINGERPRINT)?;
    Ok(())
}
