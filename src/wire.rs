//! Decoding `{"value": "<tweet>"}` and encoding `{"value":[score]}` — the seed's wire format.

use simd_json::Node;

/// Why a record's value could not become a tweet. The worker sends such records to the
/// dead-letter topic with [`DecodeError::code`] as the reason; `score` prints the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("value is not UTF-8 (invalid byte at offset {0})")]
    NotUtf8(usize),
    #[error("value is not valid JSON ({0})")]
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

/// Extracts the `value` string from JSON objects with simd-json, reusing its parser buffers
/// between documents: one per thread (partition threads each own one).
///
/// It reads simd-json's *tape* (the flat list of parsed nodes) instead of building a value tree,
/// so a document costs no allocation beyond the tape itself. As with Python's `json.loads`, a
/// key given twice takes its last value.
#[derive(Default)]
pub struct JsonDecoder {
    buffers: simd_json::Buffers,
}

impl JsonDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The `value` string of the JSON object in `raw`. simd-json parses and unescapes in place,
    /// so `raw` is copied into `scratch` (reused between calls) and the result borrows it.
    /// Other fields are ignored.
    pub fn decode<'a>(
        &mut self,
        raw: &[u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a str, DecodeError> {
        scratch.clear();
        scratch.extend_from_slice(raw);
        // The parser validates UTF-8 over the whole input itself, so an accepted document
        // needs no second pass over its bytes; a rejected one is checked here, so that "not
        // UTF-8" is reported as such rather than as a JSON error.
        let tape = match simd_json::to_tape_with_buffers(scratch, &mut self.buffers) {
            Ok(tape) => tape,
            Err(e) => {
                return Err(match std::str::from_utf8(raw) {
                    Err(bad) => DecodeError::NotUtf8(bad.valid_up_to()),
                    Ok(_) => DecodeError::InvalidJson(describe(raw, &e)),
                })
            }
        };
        let nodes = tape.0.as_slice();
        let Some(&Node::Object { len, .. }) = nodes.first() else {
            return Err(DecodeError::NotAnObject);
        };
        let (mut idx, mut found) = (1, None);
        for _ in 0..len {
            let key = nodes.get(idx);
            let value = nodes.get(idx + 1).copied();
            if let (Some(Node::String(k)), Some(v)) = (key, value) {
                if *k == "value" {
                    found = Some(v);
                }
                idx += 1 + node_len(&v);
            } else {
                return Err(DecodeError::InvalidJson("malformed object".into()));
            }
        }
        match found {
            Some(Node::String(s)) => Ok(s),
            Some(_) => Err(DecodeError::ValueNotString),
            None => Err(DecodeError::MissingValue),
        }
    }
}

/// Nodes a value takes on the tape (a container's header plus everything inside it).
fn node_len(n: &Node<'_>) -> usize {
    match n {
        Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
        _ => 1,
    }
}

/// A JSON syntax error in words a user understands ("EOF while parsing an object at line 1
/// column 9"), not the fast parser's internal error names (`InternalError(TapeError)`). Only
/// rejected documents get here, so a second, precise parse with serde_json costs nothing that
/// matters.
fn describe(raw: &[u8], e: &simd_json::Error) -> String {
    match serde_json::from_slice::<serde::de::IgnoredAny>(raw) {
        // serde_json says "ident" for a bare word such as `nope` (it was expecting `null`).
        Err(precise) => precise
            .to_string()
            .replace("expected ident", "expected value"),
        // The fast parser has limits serde_json does not (e.g. nesting depth).
        Ok(_) => format!("not supported by the parser at byte {}", e.index()),
    }
}

/// [`JsonDecoder::decode`] with a fresh decoder (for one-off use).
pub fn decode_value(raw: &[u8]) -> Result<String, DecodeError> {
    let mut scratch = Vec::new();
    JsonDecoder::new()
        .decode(raw, &mut scratch)
        .map(str::to_owned)
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

/// Writes `{"value":[score]}` into `out` and returns its length. Scores are finite by
/// construction (callers check). The score is the shortest text that reads back as the same
/// f32 (`ryu`: a tenth of `core::fmt`'s cost, which was ~2 % of a pass-through drain's CPU);
/// below 1e-4 it takes an exponent (`1.5e-7`), as Python's `json` would write it.
pub fn encode_score(score: f32, out: &mut [u8; 128]) -> usize {
    const HEAD: &[u8] = br#"{"value":["#;
    const TAIL: &[u8] = b"]}";
    let mut text = ryu::Buffer::new();
    let digits = text.format_finite(score).as_bytes();
    // At most 15 bytes ("-1.17549435e-38"): the whole document fits 128 bytes with room.
    let n = HEAD.len() + digits.len() + TAIL.len();
    out[..HEAD.len()].copy_from_slice(HEAD);
    out[HEAD.len()..n - TAIL.len()].copy_from_slice(digits);
    out[n - TAIL.len()..n].copy_from_slice(TAIL);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &[u8]) -> Result<String, DecodeError> {
        decode_value(s)
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
        // Invalid UTF-8 wherever it sits: in the value, in a key, in an ignored field's
        // value, between tokens, cut mid-character at the end.
        for (raw, at) in [
            (&b"{\"value\":\"fire \xe9 x\"}"[..], 15),
            (b"{\"va\xc3\x28lue\":\"x\"}", 4),
            (b"{\"id\":\"\xed\xa0\x80\",\"value\":\"x\"}", 7),
            (b"{\"value\":\"x\" \x80}", 13),
            (b"{\"value\":\"\xf0\x9f\x94", 10),
        ] {
            assert_eq!(
                decode(raw),
                Err(DecodeError::NotUtf8(at)),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
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
    fn errors_are_in_words_not_parser_internals() {
        for (input, want) in [
            (
                &b"this is not json"[..],
                "value is not valid JSON (expected value at line 1 column 2)",
            ),
            (
                b"",
                "value is not valid JSON (EOF while parsing a value at line 1 column 0)",
            ),
            (
                b"{\"value\":",
                "value is not valid JSON (EOF while parsing a value at line 1 column 9)",
            ),
            (
                b"{\"value\":\"x\"} 7",
                "value is not valid JSON (trailing characters at line 1 column 15)",
            ),
        ] {
            let got = decode(input).map_err(|e| e.to_string());
            assert_eq!(
                got,
                Err(want.to_string()),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn the_last_of_repeated_keys_wins_as_in_python() {
        assert_eq!(
            decode(br#"{"value":"a","x":{"value":"no"},"value":"b"}"#).as_deref(),
            Ok("b")
        );
        assert_eq!(
            decode(br#"{"value":[1,[2]],"n":null}"#),
            Err(DecodeError::ValueNotString)
        );
    }

    #[test]
    fn one_decoder_serves_many_documents() {
        let (mut d, mut scratch) = (JsonDecoder::new(), Vec::new());
        for text in ["fire", "a \\\"quoted\\\" flood", ""] {
            let raw = serde_json::to_vec(&serde_json::json!({ "value": text })).expect("json");
            assert_eq!(d.decode(&raw, &mut scratch), Ok(text));
        }
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
        let mut out = [0u8; 128];
        let n = encode_score(0.25, &mut out);
        assert_eq!(&out[..n], br#"{"value":[0.25]}"#);
        // Every score reads back as the f32 it was, tiny, subnormal and negative ones too.
        for score in [
            0.5,
            0.98461,
            1.0,
            0.0,
            1.5e-7,
            f32::MIN_POSITIVE,
            f32::from_bits(1), // the smallest subnormal
            -f32::MIN_POSITIVE,
            f32::MAX,
            std::f32::consts::PI / 4.0,
        ] {
            let n = encode_score(score, &mut out);
            let v: serde_json::Value = serde_json::from_slice(&out[..n]).expect("valid JSON");
            let back = v["value"][0].as_f64().expect("a number") as f32;
            assert_eq!(back.to_bits(), score.to_bits(), "{score}");
        }
    }
}
