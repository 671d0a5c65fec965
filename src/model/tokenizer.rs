//! Tweet text → token ids, exactly as `model/preprocess.py` does it at training time.
//!
//! The definition lives in `model/preprocess.py` and `model/README.md`; the constants
//! (length limits, stop words, the URL marker, the patterns) are read from
//! `model/preprocess.json`, and the vocabulary from `model/vocab.txt`. Rather than run the
//! Python regexes through a regex engine, this is a single pass over the bytes, which is both
//! faster and easy to reason about: every pattern involved is ASCII-only, so any byte ≥ 0x80
//! (part of a non-ASCII character) is simply a separator. The golden vectors written by the
//! training script (`tests/golden.rs`) prove the two agree.

use std::path::Path;

use rustc_hash::FxHashMap as HashMap;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The patterns this tokenizer implements. `preprocess.json` names the patterns the model was
/// trained with; loading fails if they differ, so a change on the Python side cannot silently
/// skew serving.
const URL_PATTERN: &str = "https?://[!-~]*";
const ENTITY_PATTERN: &str = "&[A-Za-z]+;|&#[0-9]+;";
const TOKEN_PATTERN: &str = "[A-Za-z]+";

#[derive(Debug, Deserialize)]
struct Config {
    max_len: usize,
    min_token_len: usize,
    pad_id: i32,
    oov_id: i32,
    lowercase: String,
    url_pattern: String,
    url_token: String,
    entity_pattern: String,
    token_pattern: String,
    stopwords: Vec<String>,
}

/// What a lowercased token maps to.
#[derive(Debug, Clone, Copy)]
enum Entry {
    Id(i32),
    Stopword,
}

/// Text → token ids. Cheap to share between threads (`&self` only).
#[derive(Debug, Clone)]
pub struct Tokenizer {
    /// Vocabulary words and stop words, lowercased, in one table: one lookup per token.
    entries: Table,
    /// Longest key in `entries`: longer tokens are out-of-vocabulary without a lookup.
    longest_entry: usize,
    max_len: usize,
    min_token_len: usize,
    pad_id: i32,
    oov_id: i32,
    /// The id the URL marker token turns into, or `None` if the filters drop it.
    url_id: Option<i32>,
}

impl Tokenizer {
    /// Loads `preprocess.json` and `vocab.txt` from a model directory.
    pub fn load(model_dir: &Path) -> Result<Self> {
        let cfg_path = model_dir.join("preprocess.json");
        let raw = std::fs::read(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let vocab_path = model_dir.join("vocab.txt");
        let vocab = std::fs::read_to_string(&vocab_path).map_err(|e| Error::io(&vocab_path, e))?;
        Self::from_bytes(&raw, &vocab, &cfg_path)
    }

    /// Builds a tokenizer from the contents of `preprocess.json` and `vocab.txt`; `config_path`
    /// only names the configuration in errors.
    pub fn from_bytes(preprocess_json: &[u8], vocab: &str, config_path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::PreprocessConfig {
            path: config_path.to_path_buf(),
            reason,
        };
        let cfg: Config =
            serde_json::from_slice(preprocess_json).map_err(|e| bad(e.to_string()))?;
        Self::from_parts(cfg, vocab.lines()).map_err(bad)
    }

    fn from_parts<'a>(
        cfg: Config,
        vocab: impl Iterator<Item = &'a str>,
    ) -> std::result::Result<Self, String> {
        for (name, got, want) in [
            ("url_pattern", cfg.url_pattern.as_str(), URL_PATTERN),
            ("entity_pattern", &cfg.entity_pattern, ENTITY_PATTERN),
            ("token_pattern", &cfg.token_pattern, TOKEN_PATTERN),
            ("lowercase", &cfg.lowercase, "ascii"),
        ] {
            if got != want {
                return Err(format!(
                    "{name} is {got:?} but this build implements {want:?}"
                ));
            }
        }
        // FxHash: tokens are short and come from our own vocabulary lookups, so a fast
        // non-cryptographic hash beats the default SipHash (no untrusted-key DoS concern here:
        // the keys are the model's vocabulary, fixed at load).
        let mut entries: HashMap<Box<[u8]>, Entry> = HashMap::default();
        for (id, word) in vocab.enumerate() {
            let id = i32::try_from(id).map_err(|_| "vocabulary too large".to_string())?;
            // Ids 0 and 1 are the reserved padding / out-of-vocabulary rows.
            if id == cfg.pad_id || id == cfg.oov_id {
                continue;
            }
            entries.insert(word.as_bytes().into(), Entry::Id(id));
        }
        if entries.is_empty() {
            return Err("empty vocabulary".into());
        }
        // Python filters stop words before the vocabulary lookup, so they win.
        for w in &cfg.stopwords {
            entries.insert(w.as_bytes().into(), Entry::Stopword);
        }
        let longest_entry = entries.keys().map(|k| k.len()).max().unwrap_or(0);
        let mut tok = Tokenizer {
            entries: Table::new(&entries)?,
            longest_entry,
            max_len: cfg.max_len,
            min_token_len: cfg.min_token_len,
            pad_id: cfg.pad_id,
            oov_id: cfg.oov_id,
            url_id: None,
        };
        if !cfg.url_token.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(format!(
                "url_token {:?} must be lowercase ASCII letters",
                cfg.url_token
            ));
        }
        tok.url_id = tok.lookup(cfg.url_token.as_bytes());
        Ok(tok)
    }

    /// Longest token sequence the model sees (the training truncation, 121).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The padding id (0).
    pub fn pad_id(&self) -> i32 {
        self.pad_id
    }

    /// The out-of-vocabulary id (1).
    pub fn oov_id(&self) -> i32 {
        self.oov_id
    }

    /// Tokenizes `text` into a new vector of ids (at most `max_len`).
    pub fn encode(&self, text: &str) -> Vec<i32> {
        let mut out = Vec::new();
        self.encode_into(text, &mut out);
        out
    }

    /// Tokenizes `text`, appending ids to `out` (cleared first).
    pub fn encode_into(&self, text: &str, out: &mut Vec<i32>) {
        out.clear();
        self.encode_append(text, out);
    }

    /// Tokenizes `text`, appending at most `max_len` ids to `out` (which may already hold other
    /// tweets' ids: the worker keeps one id buffer per chunk of records).
    ///
    /// Works in windows of up to `WINDOW` pieces: find them, prefetch the table slot of each
    /// token, then look them up in order. In the worker the vocabulary is mostly out of L2 by
    /// the time the next tweet comes (librdkafka and the model pass through the same caches),
    /// and a lookup is then a wait for memory; one token after another, the waits add up,
    /// while prefetched they overlap. The output is exactly that of looking each piece up as it
    /// is found (a window only looks further ahead, and lookups stop at `max_len` ids).
    pub fn encode_append(&self, text: &str, out: &mut Vec<i32>) {
        let limit = out.len() + self.max_len;
        let b = text.as_bytes();
        let mut pieces = [Piece::Url; WINDOW + 2];
        let mut from = Some(0);
        while let Some(i) = from {
            let (n, next) = self.scan(b, i, &mut pieces);
            for p in &pieces[..n] {
                if let Piece::Token {
                    find: Find::Table(probe),
                    ..
                } = p
                {
                    self.entries.prefetch(probe);
                }
            }
            for p in &pieces[..n] {
                if out.len() >= limit {
                    return;
                }
                match *p {
                    Piece::Url => out.extend(self.url_id),
                    Piece::Token { start, end, find } => {
                        out.extend(self.resolve(&b[start..end], find));
                    }
                }
            }
            from = next;
        }
    }

    /// The pieces of `b` from `i` on, up to [`WINDOW`] of them (a window ends between two
    /// pieces, never inside a token): how many, and where the next window starts (`None` at
    /// the end of the text). Letter runs shorter than `min_token_len` are no pieces.
    ///
    /// Bytes are classified 64 at a time into bit masks ([`Blocks`]); letter runs, `&` and
    /// `http` are then found with bit operations, a step per piece instead of a step (and a
    /// hard-to-predict branch) per byte. The pieces are those of reading byte by byte: at a
    /// byte `h` that starts `https?://` a URL begins (ending any letter run there), at a `&`
    /// that starts an entity the entity is skipped, a letter run is a token, anything else
    /// separates (`tests::scans_as_a_byte_by_byte_reading_does` compares the two).
    fn scan(
        &self,
        b: &[u8],
        mut i: usize,
        pieces: &mut [Piece; WINDOW + 2],
    ) -> (usize, Option<usize>) {
        // At most two pieces (a token and the URL marker) are added per step, and only while
        // fewer than WINDOW are held: the array never overflows.
        let mut n = 0;
        let mut blocks = Blocks::new(b, i);
        while let Some(p) = blocks.next_letter_or_amp(i) {
            if n >= WINDOW {
                return (n, Some(i));
            }
            if blocks.is_amp(p) {
                i = entity_end(b, p).unwrap_or(p + 1);
                continue;
            }
            match blocks.run_from(p) {
                Run::Letters(end) => {
                    self.end_token(b, p, end, pieces, &mut n);
                    i = end;
                }
                Run::Url { at, end } => {
                    if at > p {
                        self.end_token(b, p, at, pieces, &mut n);
                    }
                    pieces[n] = Piece::Url;
                    n += 1;
                    i = end;
                }
            }
        }
        (n, None)
    }

    /// The letter run `b[start..end]` as a piece, unless too short.
    #[inline]
    fn end_token(
        &self,
        b: &[u8],
        start: usize,
        end: usize,
        pieces: &mut [Piece; WINDOW + 2],
        n: &mut usize,
    ) {
        let Some(find) = self.find(b, start, end) else {
            return;
        };
        pieces[*n] = Piece::Token { start, end, find };
        *n += 1;
    }

    /// How the token `text[start..end]` is looked up: `None` if it is too short to keep, no
    /// lookup if it is longer than any vocabulary word.
    #[inline]
    fn find(&self, text: &[u8], start: usize, end: usize) -> Option<Find> {
        let len = end - start;
        if len < self.min_token_len {
            None
        } else if len > self.longest_entry {
            Some(Find::Oov)
        } else {
            Some(Find::Table(self.entries.probe_in(text, start, end)))
        }
    }

    /// A token's id, or `None` if the filters drop it.
    #[inline]
    fn resolve(&self, token: &[u8], find: Find) -> Option<i32> {
        let entry = match find {
            Find::Oov => return Some(self.oov_id),
            Find::Table(probe) => self.entries.get_probed(token, &probe),
        };
        match entry {
            Some(Entry::Id(id)) => Some(id),
            Some(Entry::Stopword) => None,
            None => Some(self.oov_id),
        }
    }

    /// Token (ASCII letters, any case) → id, or `None` if the filters drop it.
    fn lookup(&self, token: &[u8]) -> Option<i32> {
        let find = self.find(token, 0, token.len())?;
        self.resolve(token, find)
    }
}

/// How many pieces [`Tokenizer::encode_append`] finds before looking any up (a tweet has 10–30).
const WINDOW: usize = 32;

/// Part of a tweet that may become an id.
#[derive(Debug, Clone, Copy)]
enum Piece {
    /// The URL marker.
    Url,
    /// A letter run `text[start..end]` and how to look it up.
    Token {
        start: usize,
        end: usize,
        find: Find,
    },
}

#[derive(Debug, Clone, Copy)]
enum Find {
    /// Longer than any vocabulary word: out of vocabulary without a lookup.
    Oov,
    Table(Probe),
}

/// The vocabulary as an open-addressing table built for the one question the tokenizer asks
/// millions of times a second: which entry is this run of ASCII letters, lowercased?
///
/// A token is read 8 bytes at a time; each word is lowercased with one OR (for an ASCII letter,
/// setting bit 5 lowercases it, and tokens are letters only), hashed, and compared as words —
/// no lowercased copy, no `memcmp` call, no per-byte hashing. (A general `HashMap<Box<[u8]>, _>`
/// spent a third of a partition thread's time here: hashing, probing and `memcmp`.)
///
/// In a running worker the table is cold (the partition threads share the cores' caches with
/// librdkafka and inference): two thirds of a lookup's time was waiting for memory, first the
/// slot, then the key's bytes elsewhere. So a slot is 16 bytes and holds the key's first 8
/// bytes itself: a token of up to 8 letters (nearly all of them) is answered by the one cache
/// line its probe starts in. Keys longer than [`Table::MAX_KEY`] bytes live in a plain map;
/// tokens that long are rare.
#[derive(Debug, Clone)]
struct Table {
    /// Power-of-two sized, at most half full.
    slots: Vec<Slot>,
    /// `64 - log2(slots.len())`: a key's home slot is its hash's top bits (a multiplicative
    /// hash mixes into the high bits; its low bits depend only on the inputs' low bits).
    shift: u32,
    /// Bytes 8.. of the keys longer than 8 bytes, as zero-padded little-endian words.
    rest: Vec<u64>,
    long: HashMap<Box<[u8]>, Entry>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// The key's first 8 bytes as a little-endian word, zero-padded. 0 marks an empty slot:
    /// only keys of lowercase letters are stored, and those have no zero byte — which also
    /// makes `head` alone identify a key of up to 8 bytes.
    head: u64,
    /// The id, or [`Slot::STOPWORD`].
    id: i32,
    /// 0 for a key of up to 8 bytes; else its length in the low 8 bits and where its bytes
    /// 8.. start in `rest` above them.
    tail: u32,
}

impl Slot {
    const STOPWORD: i32 = -1;
    const EMPTY: Slot = Slot {
        head: 0,
        id: 0,
        tail: 0,
    };

    fn entry(&self) -> Entry {
        match self.id {
            Self::STOPWORD => Entry::Stopword,
            id => Entry::Id(id),
        }
    }
}

impl Table {
    const MAX_KEY: usize = 64;
    const K: u64 = 0x517c_c1b7_2722_0a95;
    /// `rest` offsets must fit in a slot's `tail` above the length byte.
    const MAX_REST: usize = 1 << 24;

    /// Fails only for a vocabulary of more than a hundred million bytes of long words.
    fn new(entries: &HashMap<Box<[u8]>, Entry>) -> Result<Table, String> {
        // A token is a run of ASCII letters, lowercased: a key with any other byte (or
        // uppercase) can never be asked for, so it is not stored at all.
        let askable = |k: &[u8]| !k.is_empty() && k.iter().all(u8::is_ascii_lowercase);
        let short = entries
            .keys()
            .filter(|k| askable(k) && k.len() <= Self::MAX_KEY)
            .count();
        let size = (short * 2).next_power_of_two().max(2);
        let mut table = Table {
            slots: vec![Slot::EMPTY; size],
            shift: 64 - size.trailing_zeros(),
            rest: Vec::new(),
            long: HashMap::default(),
        };
        let mask = size - 1;
        for (key, &entry) in entries {
            if !askable(key) {
                continue;
            }
            if key.len() > Self::MAX_KEY {
                table.long.insert(key.clone(), entry);
                continue;
            }
            let (hash, words) = Self::hash_words(key, false);
            let tail = if key.len() > 8 {
                let at = table.rest.len();
                if at >= Self::MAX_REST {
                    return Err("vocabulary too large".into());
                }
                table
                    .rest
                    .extend_from_slice(&words[1..key.len().div_ceil(8)]);
                (at as u32) << 8 | key.len() as u32
            } else {
                0
            };
            let mut i = (hash >> table.shift) as usize;
            while table.slots[i].head != 0 {
                i = (i + 1) & mask;
            }
            table.slots[i] = Slot {
                head: words[0],
                id: match entry {
                    Entry::Id(id) => id,
                    Entry::Stopword => Slot::STOPWORD,
                },
                tail,
            };
        }
        Ok(table)
    }

    /// The hash of `key` and its bytes as words (lowercased first if `lower`).
    #[inline(always)]
    fn hash_words(key: &[u8], lower: bool) -> (u64, [u64; 8]) {
        const K: u64 = Table::K;
        let mut words = [0u64; 8];
        let mut hash = (key.len() as u64).wrapping_mul(K);
        for (w, chunk) in words.iter_mut().zip(key.chunks(8)) {
            // Little-endian, zero-padded (a byte loop: a variable-length copy is a memcpy call).
            *w = chunk
                .iter()
                .rev()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
            if lower {
                // Bit 5 of each of the chunk's bytes: 'A' (0x41) | 0x20 = 'a' (0x61).
                *w |= 0x2020_2020_2020_2020u64 >> (8 * (8 - chunk.len()));
            }
            hash = (hash.rotate_left(5) ^ *w).wrapping_mul(K);
        }
        (hash, words)
    }

    /// The probe of the token `text[start..end]`: when 8 bytes from `start` are inside
    /// `text` and the token is no longer than that, its word is one load, masked.
    #[inline]
    fn probe_in(&self, text: &[u8], start: usize, end: usize) -> Probe {
        let len = end - start;
        match text.get(start..start + 8) {
            Some(&[a, b, c, d, e, f, g, h]) if len <= 8 => {
                let keep = u64::MAX >> (8 * (8 - len));
                let w =
                    (u64::from_le_bytes([a, b, c, d, e, f, g, h]) | 0x2020_2020_2020_2020) & keep;
                // hash_words for one word.
                let hash =
                    ((len as u64).wrapping_mul(Self::K).rotate_left(5) ^ w).wrapping_mul(Self::K);
                Probe {
                    home: (hash >> self.shift) as usize,
                    head: w,
                }
            }
            _ => self.probe(&text[start..end]),
        }
    }

    /// Where `token` (a run of ASCII letters in any case) is looked for.
    #[inline]
    fn probe(&self, token: &[u8]) -> Probe {
        let (hash, words) = Self::hash_words(token, true);
        Probe {
            home: (hash >> self.shift) as usize,
            head: words[0],
        }
    }

    /// Starts fetching the slot a probe begins at into the cache (a hint; no-op elsewhere than
    /// on x86-64).
    #[inline]
    fn prefetch(&self, probe: &Probe) {
        #[cfg(target_arch = "x86_64")]
        if let Some(slot) = self.slots.get(probe.home) {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            // SAFETY: a prefetch never faults and has no effect but on caches; the pointer is
            // that of a live slot anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T0>((slot as *const Slot).cast::<i8>()) };
        }
    }

    /// The entry for `token`, a run of ASCII letters in any case.
    #[cfg(test)]
    fn get(&self, token: &[u8]) -> Option<Entry> {
        self.get_probed(token, &self.probe(token))
    }

    /// The entry for `token`, a run of ASCII letters in any case, whose probe is `probe`.
    #[inline]
    fn get_probed(&self, token: &[u8], probe: &Probe) -> Option<Entry> {
        if token.len() > Self::MAX_KEY {
            return self
                .long
                .get(token.to_ascii_lowercase().as_slice())
                .copied();
        }
        if token.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = probe.home;
        if token.len() <= 8 {
            loop {
                let slot = &self.slots[i];
                if slot.head == probe.head && slot.tail == 0 {
                    return Some(slot.entry());
                }
                if slot.head == 0 {
                    return None;
                }
                i = (i + 1) & mask;
            }
        }
        let (_, words) = Self::hash_words(token, true);
        let n = token.len().div_ceil(8);
        loop {
            let slot = &self.slots[i];
            if slot.head == 0 {
                return None;
            }
            if slot.head == probe.head
                && slot.tail & 0xff == token.len() as u32
                && self.rest[(slot.tail >> 8) as usize..][..n - 1]
                    .iter()
                    .zip(&words[1..n])
                    .all(|(a, b)| a == b)
            {
                return Some(slot.entry());
            }
            i = (i + 1) & mask;
        }
    }
}

/// A token's home slot in a [`Table`] and its first 8 bytes, lowercased.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Probe {
    home: usize,
    head: u64,
}

/// The byte classes of 64 bytes of text, one bit per byte (bit k: byte k).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Classes {
    /// ASCII letters.
    letters: u64,
    /// `&`.
    amps: u64,
    /// Where `http` starts. Exact in bits 0..[`HTTP_EXACT`] only: the top three would need
    /// bytes past the block, and are 0.
    http: u64,
}

const BLOCK: usize = 64;
const HTTP_EXACT: usize = BLOCK - 3;

impl Classes {
    /// Bytes past the end of the text count as 0 (no letter, no `&`, no `h`).
    fn at(b: &[u8], at: usize) -> Classes {
        match b.get(at..).and_then(<[u8]>::first_chunk::<BLOCK>) {
            Some(block) => Self::of(block),
            None => {
                let mut block = [0u8; BLOCK];
                let rest = b.get(at..).unwrap_or_default();
                block[..rest.len()].copy_from_slice(rest);
                Self::of(&block)
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn of(block: &[u8; BLOCK]) -> Classes {
        // SAFETY: SSE2 is part of every x86-64 CPU; the loads read the 64 bytes of `block`.
        unsafe { Self::of_sse2(block) }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn of(block: &[u8; BLOCK]) -> Classes {
        Self::of_bytes(block)
    }

    /// [`Classes::of_bytes`], 16 bytes per instruction.
    #[cfg(target_arch = "x86_64")]
    unsafe fn of_sse2(block: &[u8; BLOCK]) -> Classes {
        use std::arch::x86_64::{
            __m128i, _mm_add_epi8, _mm_cmpeq_epi8, _mm_cmplt_epi8, _mm_loadu_si128,
            _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        };
        let (mut letters, mut amps, mut h, mut t, mut p) = (0u64, 0u64, 0u64, 0u64, 0u64);
        for j in 0..BLOCK / 16 {
            let v = _mm_loadu_si128(block.as_ptr().add(16 * j).cast::<__m128i>());
            let bits = |m: __m128i| u64::from(_mm_movemask_epi8(m) as u16) << (16 * j);
            // A letter once lowercased (| 0x20) is in 'a'..='z'; no unsigned byte compare in
            // SSE2, so shift the range to the bottom of the signed one: + 0x1f maps 'a'..='z'
            // to -128..=-103, and nothing else there.
            let lower = _mm_or_si128(v, _mm_set1_epi8(0x20));
            let shifted = _mm_add_epi8(lower, _mm_set1_epi8(0x1f));
            letters |= bits(_mm_cmplt_epi8(shifted, _mm_set1_epi8(-102)));
            amps |= bits(_mm_cmpeq_epi8(v, _mm_set1_epi8(b'&' as i8)));
            h |= bits(_mm_cmpeq_epi8(v, _mm_set1_epi8(b'h' as i8)));
            t |= bits(_mm_cmpeq_epi8(v, _mm_set1_epi8(b't' as i8)));
            p |= bits(_mm_cmpeq_epi8(v, _mm_set1_epi8(b'p' as i8)));
        }
        Self::with_http(letters, amps, h, t, p)
    }

    /// The classes, one byte at a time (the definition; also the code where SSE2 is not).
    #[cfg_attr(target_arch = "x86_64", allow(dead_code))]
    fn of_bytes(block: &[u8; BLOCK]) -> Classes {
        let (mut letters, mut amps, mut h, mut t, mut p) = (0u64, 0u64, 0u64, 0u64, 0u64);
        for (k, &c) in block.iter().enumerate() {
            letters |= u64::from(c.is_ascii_alphabetic()) << k;
            amps |= u64::from(c == b'&') << k;
            h |= u64::from(c == b'h') << k;
            t |= u64::from(c == b't') << k;
            p |= u64::from(c == b'p') << k;
        }
        Self::with_http(letters, amps, h, t, p)
    }

    fn with_http(letters: u64, amps: u64, h: u64, t: u64, p: u64) -> Classes {
        Classes {
            letters,
            amps,
            http: h & (t >> 1) & (t >> 2) & (p >> 3),
        }
    }
}

/// What a letter run turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    /// Letters up to `end` (exclusive).
    Letters(usize),
    /// A URL starts at `at` (the letters before it, if any, are a token) and ends at `end`.
    Url { at: usize, end: usize },
}

/// A text seen through the [`Classes`] of one 64-byte block at a time, moved forward as the
/// scan goes (about twice per tweet).
struct Blocks<'a> {
    b: &'a [u8],
    /// Where the current block starts.
    at: usize,
    c: Classes,
}

impl<'a> Blocks<'a> {
    fn new(b: &'a [u8], at: usize) -> Self {
        Blocks {
            b,
            at,
            c: Classes::at(b, at),
        }
    }

    fn move_to(&mut self, at: usize) {
        self.at = at;
        self.c = Classes::at(self.b, at);
    }

    /// The first letter or `&` at or after `i`.
    #[inline]
    fn next_letter_or_amp(&mut self, mut i: usize) -> Option<usize> {
        while i < self.b.len() {
            if i - self.at >= BLOCK {
                self.move_to(i);
            }
            let rel = i - self.at;
            let m = (self.c.letters | self.c.amps) >> rel;
            if m != 0 {
                return Some(i + m.trailing_zeros() as usize);
            }
            i = self.at + BLOCK;
        }
        None
    }

    /// Whether byte `i` (inside the current block) is `&`.
    #[inline]
    fn is_amp(&self, i: usize) -> bool {
        self.c.amps >> (i - self.at) & 1 == 1
    }

    /// The letter run that starts at `p` (a letter inside the current block): where it ends,
    /// or where a URL inside it starts.
    #[inline]
    fn run_from(&mut self, p: usize) -> Run {
        let mut s = p;
        loop {
            if s - self.at >= HTTP_EXACT {
                self.move_to(s);
            }
            let rel = s - self.at;
            // Letters from `s` on; past the block's end the shift brings in zeros, read as
            // "not known to end here".
            let len = ((!self.c.letters) >> rel).trailing_zeros() as usize;
            // `http` inside the run: all of it lies below HTTP_EXACT unless the run reaches
            // the block's end (then the next block looks again from HTTP_EXACT).
            let below = (rel + len).min(HTTP_EXACT);
            let mut starts = self.c.http & !((1u64 << rel) - 1) & ((1u64 << below) - 1);
            while starts != 0 {
                let at = self.at + starts.trailing_zeros() as usize;
                if let Some(end) = url_end(self.b, at) {
                    return Run::Url { at, end };
                }
                starts &= starts - 1;
            }
            if rel + len < BLOCK {
                return Run::Letters(s + len);
            }
            s = self.at + HTTP_EXACT;
        }
    }
}

/// If `https?://` starts at `i`, the end of the URL (`[!-~]*` after the scheme).
#[inline]
fn url_end(b: &[u8], i: usize) -> Option<usize> {
    let rest = &b[i..];
    let scheme = if rest.starts_with(b"http://") {
        7
    } else if rest.starts_with(b"https://") {
        8
    } else {
        return None;
    };
    let tail = &rest[scheme..];
    let n = tail
        .iter()
        .position(|&c| !(b'!'..=b'~').contains(&c))
        .unwrap_or(tail.len());
    Some(i + scheme + n)
}

/// If `&[A-Za-z]+;` or `&#[0-9]+;` starts at `i`, the end of the entity.
#[inline]
fn entity_end(b: &[u8], i: usize) -> Option<usize> {
    let rest = &b[i + 1..];
    let (body, skip): (fn(&u8) -> bool, usize) = match rest.first() {
        Some(b'#') => (u8::is_ascii_digit, 1),
        Some(c) if c.is_ascii_alphabetic() => (u8::is_ascii_alphabetic, 0),
        _ => return None,
    };
    let run = rest[skip..].iter().take_while(|c| body(c)).count();
    if run == 0 || rest.get(skip + run) != Some(&b';') {
        return None;
    }
    Some(i + 1 + skip + run + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> Tokenizer {
        tok_max(5)
    }

    fn tok_max(max_len: usize) -> Tokenizer {
        let cfg = Config {
            max_len,
            min_token_len: 2,
            pad_id: 0,
            oov_id: 1,
            lowercase: "ascii".into(),
            url_pattern: URL_PATTERN.into(),
            url_token: "xurlx".into(),
            entity_pattern: ENTITY_PATTERN.into(),
            token_pattern: TOKEN_PATTERN.into(),
            stopwords: vec!["the".into(), "at".into()],
        };
        let vocab = ["<pad>", "<oov>", "xurlx", "fire", "news", "amp"];
        Tokenizer::from_parts(cfg, vocab.into_iter()).expect("valid config")
    }

    #[test]
    fn lowercases_drops_stopwords_short_and_unknown_words() {
        assert_eq!(tok().encode("The FIRE at a zzz"), vec![3, 1]);
    }

    #[test]
    fn url_glued_to_a_word_splits_it_and_becomes_the_marker() {
        assert_eq!(
            tok().encode("Newshttp://t.co/x&amp;fire fire"),
            vec![4, 2, 3]
        );
    }

    #[test]
    fn entities_separate_words_but_malformed_ones_are_letters() {
        assert_eq!(
            tok().encode("fire&amp;news &amp fire&#39;"),
            vec![3, 4, 5, 3]
        );
    }

    #[test]
    fn non_ascii_bytes_separate_tokens() {
        assert_eq!(tok().encode("fireÛ_news café"), vec![3, 4, 1]);
    }

    #[test]
    fn truncates_at_max_len_including_the_url_marker() {
        assert_eq!(
            tok().encode("fire fire fire fire http://x fire"),
            vec![3, 3, 3, 3, 2]
        );
        assert_eq!(
            tok().encode("fire fire fire fire fire http://x"),
            vec![3; 5]
        );
    }

    #[test]
    fn a_text_longer_than_a_lookup_window_tokenizes_as_its_words_do_one_by_one() {
        // 200 words: several windows, with URLs, entities, stop words and dropped short words
        // falling on their edges, and truncation at lengths around a window.
        let words = [
            "fire",
            "the",
            "News",
            "zzz",
            "http://x.co/a",
            "&amp;",
            "a",
            "FIRE",
            "&#39;",
            "qq",
        ];
        let text: Vec<&str> = (0..200).map(|i| words[(i * 7) % words.len()]).collect();
        let all = tok_max(1000);
        let want: Vec<i32> = text.iter().flat_map(|w| all.encode(w)).collect();
        assert!(want.len() > 2 * WINDOW, "{}", want.len());
        assert_eq!(all.encode(&text.join(" ")), want);
        for max in [1, WINDOW - 1, WINDOW, WINDOW + 1, 2 * WINDOW + 1] {
            assert_eq!(
                tok_max(max).encode(&text.join(" ")),
                want[..max],
                "max_len {max}"
            );
        }
    }

    /// The definition [`Tokenizer::scan`] must agree with: one byte at a time, each token
    /// looked up as it ends, stopping at `max_len` ids.
    fn encode_byte_by_byte(t: &Tokenizer, text: &str) -> Vec<i32> {
        let b = text.as_bytes();
        let mut out = Vec::new();
        let token = |start: Option<usize>, end: usize, out: &mut Vec<i32>| {
            if let Some(start) = start {
                out.extend(t.lookup(&b[start..end]));
            }
        };
        let (mut i, mut start) = (0, None);
        while i < b.len() {
            let c = b[i];
            if let Some(end) = (c == b'h').then(|| url_end(b, i)).flatten() {
                token(start.take(), i, &mut out);
                out.extend(t.url_id);
                i = end;
            } else if let Some(end) = (c == b'&').then(|| entity_end(b, i)).flatten() {
                token(start.take(), i, &mut out);
                i = end;
            } else {
                if c.is_ascii_alphabetic() {
                    start.get_or_insert(i);
                } else {
                    token(start.take(), i, &mut out);
                }
                i += 1;
            }
        }
        token(start, b.len(), &mut out);
        out.truncate(t.max_len);
        out
    }

    /// Texts built from pieces that matter to the scan (URL prefixes whole and broken,
    /// entities whole and broken, letters of every case, digits, separators, non-ASCII), of
    /// lengths up to several 64-byte blocks, with letter runs longer than a block.
    fn scan_texts() -> Vec<String> {
        const PARTS: [&str; 24] = [
            "fire",
            "NEWS",
            "the",
            "a",
            "h",
            "http",
            "https://t.co/Ab1",
            "http://x",
            "htt",
            "hhttp://y",
            "httpx",
            "&amp;",
            "&#39;",
            "&",
            "&amp",
            "&#;",
            ";",
            " ",
            "  ",
            "9",
            "é",
            "Û_",
            "xurlx",
            "qwertyuiopasdfghjklzxcvbnmqwertyuiopasdfghjklzxcvbnmqwertyuiopasdfgh",
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        (0..3000)
            .map(|_| {
                let parts = (next() % 60) as usize;
                (0..parts)
                    .map(|_| PARTS[(next() % PARTS.len() as u64) as usize])
                    .collect()
            })
            .collect()
    }

    #[test]
    fn scans_as_a_byte_by_byte_reading_does() {
        for max in [1000, 3, WINDOW + 1] {
            let t = tok_max(max);
            for text in scan_texts() {
                assert_eq!(t.encode(&text), encode_byte_by_byte(&t, &text), "{text:?}");
                // Every suffix: the text's end, and with it the last block, falls everywhere.
                for cut in (0..text.len())
                    .filter(|&c| text.is_char_boundary(c))
                    .step_by(7)
                {
                    let rest = &text[cut..];
                    assert_eq!(t.encode(rest), encode_byte_by_byte(&t, rest), "{rest:?}");
                }
            }
        }
    }

    #[test]
    fn byte_classes_are_the_same_however_they_are_computed() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..2000 {
            let mut block = [0u8; BLOCK];
            for (k, byte) in block.iter_mut().enumerate() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Half the rounds any byte, half the bytes the classes turn on.
                *byte = if round % 2 == 0 {
                    x as u8
                } else {
                    b"hHtTpP&a@[`{zZ\0\x80\xff"[(x % 17) as usize]
                };
                if round == 0 {
                    *byte = k as u8 * 4;
                }
            }
            assert_eq!(Classes::of(&block), Classes::of_bytes(&block), "{block:?}");
        }
        // Every byte value in every lane.
        for v in 0..=255u8 {
            let block = [v; BLOCK];
            assert_eq!(Classes::of(&block), Classes::of_bytes(&block), "{v}");
        }
    }

    #[test]
    fn a_token_read_as_one_word_probes_as_it_does_byte_by_byte() {
        let table = &tok().entries;
        // Runs of every length from 1 to 10, upper and lower case, ending 0..8 bytes before
        // the end of the text (the last ones cannot be read as a whole word).
        let text = b"a Bb ccC dddD eEeEe FFFFFF gggggGg hhhhhhhH iiiiiiiii JJJJJJJJJJ x yz";
        let mut start = None;
        for i in 0..=text.len() {
            match (text.get(i).is_some_and(u8::is_ascii_alphabetic), start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    let want = table.probe(&text[s..i]);
                    assert_eq!(table.probe_in(text, s, i), want, "{s}..{i}");
                    start = None;
                }
                _ => {}
            }
        }
    }

    #[test]
    fn the_vocabulary_table_answers_as_an_exact_map_would() {
        let mut words: Vec<String> = vec!["a".into(), "fire".into(), "news".into()];
        // Every length up to past the table's word-packed limit, and non-letter keys.
        for n in 1..=70 {
            words.push("q".repeat(n));
            words.push(format!("{}z", "ab".repeat(n / 2)));
        }
        words.push("don't".into());
        words.push("x1".into());
        let map: HashMap<Box<[u8]>, Entry> = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.as_bytes().into(), Entry::Id(i as i32)))
            .collect();
        let table = Table::new(&map).expect("small vocabulary");
        let id = |e: Option<Entry>| match e {
            Some(Entry::Id(i)) => Some(i),
            Some(Entry::Stopword) => Some(-1),
            None => None,
        };
        for (w, e) in &map {
            let w = std::str::from_utf8(w).expect("ascii");
            if w.bytes().all(|b| b.is_ascii_lowercase()) {
                assert_eq!(id(table.get(w.as_bytes())), id(Some(*e)), "{w}");
                let upper = w.to_ascii_uppercase();
                assert_eq!(id(table.get(upper.as_bytes())), id(Some(*e)), "{upper}");
            }
        }
        for miss in ["b", "fir", "fires", "qq_", "QQQQQQQQQ", "abababz"] {
            let known = map.contains_key(miss.to_ascii_lowercase().as_bytes());
            assert_eq!(table.get(miss.as_bytes()).is_some(), known, "{miss}");
        }
        // Keys with non-letters are never asked for (the scanner splits at them): "dont" is
        // not "don't", and a letter run never equals "x1".
        assert!(table.get(b"dont").is_none());
        assert!(table.get(b"x").is_none());
    }

    #[test]
    fn rejects_a_config_for_another_preprocessing() {
        let mut cfg = serde_json::from_str::<Config>(
            r#"{"max_len":1,"min_token_len":1,"pad_id":0,"oov_id":1,"lowercase":"unicode",
                "url_pattern":"x","url_token":"u","entity_pattern":"e","token_pattern":"t","stopwords":[]}"#,
        )
        .expect("json");
        cfg.url_pattern = URL_PATTERN.into();
        let err = Tokenizer::from_parts(cfg, ["a"].into_iter()).expect_err("must reject");
        assert!(err.contains("entity_pattern"), "{err}");
    }
}
