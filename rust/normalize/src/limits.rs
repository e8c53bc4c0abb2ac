//! Size and complexity caps. Defaults are the README's table; Python may override any.

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_ratio: usize,
    pub max_events: usize,
    pub max_event_bytes: usize,
    pub max_name_chars: usize,
    pub max_event_id_chars: usize,
    pub max_user_id_chars: usize,
    pub max_property_depth: usize,
    pub max_properties: usize,
    pub max_key_chars: usize,
    pub max_string_bytes: usize,
    pub max_future_us: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 5 * 1024 * 1024,
            max_ratio: 100,
            max_events: 5000,
            max_event_bytes: 32 * 1024,
            max_name_chars: 200,
            max_event_id_chars: 128,
            max_user_id_chars: 256,
            max_property_depth: 4,
            max_properties: 256,
            max_key_chars: 256,
            max_string_bytes: 8 * 1024,
            max_future_us: 3_600_000_000,
        }
    }
}
