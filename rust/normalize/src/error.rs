//! Error values with stable machine-readable codes.

/// A whole-body failure: the request cannot be processed at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError {
    pub code: &'static str,
    pub message: String,
}

impl BodyError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        BodyError {
            code,
            message: message.into(),
        }
    }
}

/// One event refused; the rest of the batch goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub index: usize,
    pub code: &'static str,
    pub message: String,
}

/// A per-event failure before its index is known.
pub type EventError = (&'static str, String);

pub fn reject<T>(code: &'static str, message: impl Into<String>) -> Result<T, EventError> {
    Err((code, message.into()))
}
