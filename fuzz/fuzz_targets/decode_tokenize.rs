//! Any bytes a record can carry, through what a partition thread does with them: JSON decoding
//! (simd-json, in place) and tokenization. Nothing may panic, and the ids must respect the
//! model's limits.
#![no_main]

use std::sync::OnceLock;

use kafka_infer::wire::JsonDecoder;
use kafka_infer::model::files::ModelFiles;
use kafka_infer::Tokenizer;
use libfuzzer_sys::fuzz_target;

fn tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let f = ModelFiles::builtin();
        Tokenizer::from_bytes(&f.preprocess, &f.vocab, &f.preprocess_path).expect("tokenizer")
    })
}

fuzz_target!(|data: &[u8]| {
    let tok = tokenizer();
    let check = |ids: &[i32]| {
        assert!(ids.len() <= tok.max_len());
        assert!(ids.iter().all(|&id| id > tok.pad_id()));
    };
    let mut scratch = Vec::new();
    if let Ok(text) = JsonDecoder::new().decode(data, &mut scratch) {
        // The decoder leaves UTF-8 validation to the parser: nothing invalid may get through.
        assert!(std::str::from_utf8(data).is_ok());
        check(&tok.encode(text));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        check(&tok.encode(text));
        let mut ids = vec![7; 3];
        tok.encode_append(text, &mut ids);
        assert!(ids.len() <= 3 + tok.max_len());
    }
});
