//! Decoding `{"value": "<tweet>"}` and encoding `{"value":[score]}` — the seed's wire format.

use std::borrow::Cow;
use std::io::Write;

/// Why a record's value could not become a tweet. The worker sends such records to the
/// dead-letter topic with [`DecodeError::code`] as the reason; `score` prints the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("value is not UTF-8 (invalid byte at offset {0})")]
    NotUtf8(usize),
    #[error("value is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("JSON value is not an object")]
    NotAnObject,
    #[error("JSON object has no \"value\" field")]
    MissingValue,
    #[error("\"value\" is not a string")]
    ValueNotString,
    #[error("value is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("record has no value (null payload)")]
    NoPayload,
}

impl DecodeError {
    /// A short, stable reason code (dead-letter header `dlq.reason`).
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::NotUtf8(_) => "not_utf8",
            DecodeError::InvalidJson(_) => "invalid_json",
            DecodeError::NotAnObject => "not_an_object",
            DecodeError::MissingValue => "missing_value",
            DecodeError::ValueNotString => "value_not_string",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::NoPayload => "no_payload",
        }
    }
}

/// Extracts the `value` string from a JSON object with simd-json. `buf` is used as scratch
/// space (simd-json parses in place), so pass a copy you own. Other fields are ignored.
pub fn decode_value(buf: &mut [u8]) -> Result<Cow<'_, str>, DecodeError> {
    // Check UTF-8 first so that "not UTF-8" is reported as such, not as a JSON error.
    if let Err(e) = std::str::from_utf8(buf) {
        return Err(DecodeError::NotUtf8(e.valid_up_to()));
    }
    let value =
        simd_json::to_borrowed_value(buf).map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
    match value {
        simd_json::BorrowedValue::Object(mut obj) => match obj.remove("value") {
            Some(simd_json::BorrowedValue::String(s)) => Ok(s),
            Some(_) => Err(DecodeError::ValueNotString),
            None => Err(DecodeError::MissingValue),
        },
        _ => Err(DecodeError::NotAnObject),
    }
}

/// The same as [`decode_value`] with serde_json — kept for the decoding benchmark only.
pub fn decode_value_serde_json(buf: &[u8]) -> Result<String, DecodeError> {
    if let Err(e) = std::str::from_utf8(buf) {
        return Err(DecodeError::NotUtf8(e.valid_up_to()));
    }
    let value: serde_json::Value =
        serde_json::from_slice(buf).map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
    match value {
        serde_json::Value::Object(mut obj) => match obj.remove("value") {
            Some(serde_json::Value::String(s)) => Ok(s),
            Some(_) => Err(DecodeError::ValueNotString),
            None => Err(DecodeError::MissingValue),
        },
        _ => Err(DecodeError::NotAnObject),
    }
}

/// Appends `{"value":[score]}` to `out`. Scores are finite by construction (callers check).
pub fn encode_score(score: f32, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{{\"value\":[{score}]}}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &[u8]) -> Result<String, DecodeError> {
        let mut buf = s.to_vec();
        decode_value(&mut buf).map(|c| c.into_owned())
    }

    #[test]
    fn extracts_value_and_ignores_other_fields() {
        assert_eq!(
            decode(br#"{"id":7,"value":"fire \u00e9 \"x\""}"#).as_deref(),
            Ok("fire é \"x\"")
        );
    }

    #[test]
    fn names_each_kind_of_bad_input() {
        assert_eq!(decode(b"\xff{}"), Err(DecodeError::NotUtf8(0)));
        assert!(matches!(
            decode(b"{\"value\":"),
            Err(DecodeError::InvalidJson(_))
        ));
        assert!(matches!(decode(b""), Err(DecodeError::InvalidJson(_))));
        assert_eq!(decode(b"[1]"), Err(DecodeError::NotAnObject));
        assert_eq!(decode(br#"{"text":"x"}"#), Err(DecodeError::MissingValue));
        assert_eq!(decode(br#"{"value":3}"#), Err(DecodeError::ValueNotString));
    }

    #[test]
    fn serde_json_twin_agrees() {
        for case in [
            &br#"{"value":"a b"}"#[..],
            br#"{"value":null}"#,
            b"nope",
            br#"{"v":1}"#,
        ] {
            let (a, b) = (decode(case), decode_value_serde_json(case));
            let code = |r: &Result<String, DecodeError>| r.as_ref().map_err(|e| e.code()).cloned();
            assert_eq!(code(&a), code(&b), "{:?}", String::from_utf8_lossy(case));
        }
    }

    #[test]
    fn encodes_the_seed_output_format() {
        let mut out = Vec::new();
        encode_score(0.25, &mut out);
        assert_eq!(out, br#"{"value":[0.25]}"#);
    }
}
