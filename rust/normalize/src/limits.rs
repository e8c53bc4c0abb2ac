//! Size and complexity caps. Defaults are the README's table; Python may override any.
//!
//! The fields are declared once, in the `limits!` invocation below: it generates the struct,
//! its `Default`, and (with the `python` feature) the `analytics._normalize.Limits` class
//! itself: keyword-only constructor with the same defaults, read-only attributes, `==`, repr.

macro_rules! limits {
    ($( $(#[$doc:meta])* $field:ident : $ty:ty = $default:expr, )*) => {
        /// Size and complexity caps (see the README's table for the defaults).
        #[cfg_attr(
            feature = "python",
            pyo3::pyclass(module = "analytics._normalize", frozen, get_all, eq)
        )]
        #[derive(Debug, Clone, Copy, PartialEq)]
        pub struct Limits {
            $( $(#[$doc])* pub $field: $ty, )*
        }

        impl Default for Limits {
            fn default() -> Self {
                Limits { $( $field: $default, )* }
            }
        }

        #[cfg(feature = "python")]
        #[pyo3::pymethods]
        impl Limits {
            #[new]
            #[allow(clippy::too_many_arguments)] // one keyword argument per field
            #[pyo3(signature = (*, $( $field = $default ),*))]
            fn new($( $field: $ty ),*) -> Self {
                Limits { $( $field, )* }
            }

            fn __repr__(&self) -> String {
                let fields = [$( format!(concat!(stringify!($field), "={}"), self.$field) ),*];
                format!("Limits({})", fields.join(", "))
            }
        }
    };
}

limits! {
    /// Largest body in bytes, after decompression.
    max_body_bytes: usize = 5 * 1024 * 1024,
    /// Largest decompressed/compressed size ratio of a gzip body (64 KiB always pass).
    max_ratio: usize = 100,
    max_events: usize = 5000,
    /// Largest event, in bytes of its JSON text.
    max_event_bytes: usize = 32 * 1024,
    max_name_chars: usize = 200,
    max_event_id_chars: usize = 128,
    max_user_id_chars: usize = 256,
    max_property_depth: usize = 4,
    max_properties: usize = 256,
    max_key_chars: usize = 256,
    /// Longest property string, in UTF-8 bytes.
    max_string_bytes: usize = 8 * 1024,
    /// How far past the receive time a ts may lie before it is clamped.
    max_future_us: i64 = 3_600_000_000,
}
