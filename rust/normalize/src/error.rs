//! Every error code the crate can return, with its HTTP status: the one registry of them.
//!
//! Clients match on the code strings, so they never change; Python reads the registry
//! (`ERROR_CODES`, and `.status` on the raised exceptions) instead of spelling codes or
//! statuses again.

use std::fmt;

/// Where a code is returned: the whole body refused, one event refused, or a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A [`BodyError`] (`NormalizeError` in Python).
    Body,
    /// A [`Rejection`] in `Normalized::rejected`.
    Event,
    /// Both: a JSON body that does not parse, or one NDJSON line that does not.
    BodyOrEvent,
    /// A [`crate::signature::SignatureError`] (`SignatureError` in Python).
    Signature,
}

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, $status:literal, $scope:ident; )*) => {
        /// A stable machine-readable error code (see the README for when each is returned).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as clients see it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }

            /// The HTTP status of a request refused with this code. A per-event code has the
            /// status it would have as a whole-request error (the API answers 200 with the
            /// rejection listed), so every code has one.
            pub const fn status(self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $status,)*
                }
            }

            pub const fn scope(self) -> Scope {
                match self {
                    $(ErrorCode::$variant => Scope::$scope,)*
                }
            }
        }
    };
}

error_codes! {
    // The body as a whole (README "Body", in the order checked).
    UnsupportedEncoding = "unsupported_encoding", 415, Body;
    InvalidGzip = "invalid_gzip", 400, Body;
    BodyTooLarge = "body_too_large", 413, Body;
    DecompressionBomb = "decompression_bomb", 413, Body;
    EmptyBody = "empty_body", 400, Body;
    InvalidJson = "invalid_json", 400, BodyOrEvent;
    InvalidShape = "invalid_shape", 400, Body;
    InvalidSentAt = "invalid_sent_at", 400, Body;
    TooManyEvents = "too_many_events", 413, Body;
    // One event (README "Per event", in the order checked).
    EventTooLarge = "event_too_large", 400, Event;
    InvalidEvent = "invalid_event", 400, Event;
    DuplicateKey = "duplicate_key", 400, Event;
    MissingName = "missing_name", 400, Event;
    InvalidName = "invalid_name", 400, Event;
    InvalidEventId = "invalid_event_id", 400, Event;
    InvalidTs = "invalid_ts", 400, Event;
    InvalidUserId = "invalid_user_id", 400, Event;
    InvalidValue = "invalid_value", 400, Event;
    /// A number PostgreSQL's `double precision` rollup sums could overflow (README "Per event").
    ValueOutOfRange = "value_out_of_range", 400, Event;
    InvalidProperties = "invalid_properties", 400, Event;
    // `X-Signature` (README "Signatures").
    MalformedSignature = "malformed_signature", 401, Signature;
    StaleSignature = "stale_signature", 401, Signature;
    FutureSignature = "future_signature", 401, Signature;
    BadSignature = "bad_signature", 401, Signature;
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lets tests (and callers) compare a code with the string clients see.
impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A whole-body failure: the request cannot be processed at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError {
    pub code: ErrorCode,
    pub message: String,
}

impl BodyError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
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
    pub code: ErrorCode,
    pub message: String,
}

/// A per-event failure before its index is known.
pub type EventError = (ErrorCode, String);

pub fn reject<T>(code: ErrorCode, message: impl Into<String>) -> Result<T, EventError> {
    Err((code, message.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_code_is_unique_and_has_a_status() {
        let mut seen = HashSet::new();
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "{s} is declared twice");
            assert!(
                !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s} is not snake_case"
            );
            let expected: &[u16] = match code.scope() {
                Scope::Body => &[400, 413, 415],
                Scope::Event | Scope::BodyOrEvent => &[400],
                Scope::Signature => &[401],
            };
            assert!(expected.contains(&code.status()), "{s}: {}", code.status());
        }
    }

    #[test]
    fn every_code_is_in_the_readme() {
        let readme = include_str!("../README.md");
        for code in ErrorCode::ALL {
            assert!(
                readme.contains(&format!("`{code}`")),
                "{code} is not documented"
            );
        }
    }
}
