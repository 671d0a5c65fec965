"""The one definition of kafka-infer's text preprocessing (training side).

The Rust tokenizer (src/preprocess.rs) reproduces exactly this, reading the same
`preprocess.json` and `vocab.txt`; golden vectors written by train.py prove it.

Steps, in order:
1. In one left-to-right pass, replace every match of
       https?://[!-~]*              a URL (the ASCII printable run after the scheme)
   with " <url_token> " (links are signal: news reports link out), and every match of
       &[A-Za-z]+;  |  &#[0-9]+;    an HTML entity
   with a single space (so words on either side stay apart).
2. Tokens are the maximal runs of ASCII letters [A-Za-z] in what is left. Everything
   else -- digits, punctuation, '#', '@', emoji, mojibake such as 'Û_', and letters
   outside ASCII -- separates tokens and is dropped.
3. Lowercase each token (ASCII only, so Python and Rust agree by construction).
4. Drop tokens shorter than `min_token_len` and tokens in `stopwords`.
5. Keep the first `max_len` tokens.
6. Map each token to its id in vocab.txt (line n, 0-based, is id n): 0 is padding,
   1 is out-of-vocabulary.
"""

import json
import re
from pathlib import Path

URL_PATTERN = r"https?://[!-~]*"
ENTITY_PATTERN = r"&[A-Za-z]+;|&#[0-9]+;"
CLEAN_RE = re.compile(f"(?P<url>{URL_PATTERN})|{ENTITY_PATTERN}")
URL_TOKEN = "xurlx"
TOKEN_RE = re.compile(r"[A-Za-z]+")

PAD_ID = 0
OOV_ID = 1

# NLTK's English stop-word list (3.8), minus the negations that carry meaning here
# ("no", "not", "nor").
STOPWORDS = sorted(
    set(
        """i me my myself we our ours ourselves you your yours yourself yourselves he him his
        himself she her hers herself it its itself they them their theirs themselves what which
        who whom this that these those am is are was were be been being have has had having do
        does did doing a an the and but if or because as until while of at by for with about
        against between into through during before after above below to from up down in out on
        off over under again further then once here there when where why how all any both each
        few more most other some such only own same so than too very s t can will just don
        should now d ll m o re ve y ain aren couldn didn doesn hadn hasn haven isn ma mightn
        mustn needn shan shouldn wasn weren won wouldn""".split()
    )
)


class Preprocessor:
    def __init__(self, config: dict, vocab: list[str]):
        self.max_len = config["max_len"]
        self.min_token_len = config["min_token_len"]
        self.stopwords = frozenset(config["stopwords"])
        self.url_token = config["url_token"]
        self.vocab = {w: i for i, w in enumerate(vocab)}

    @classmethod
    def load(cls, model_dir: Path) -> "Preprocessor":
        config = json.loads((model_dir / "preprocess.json").read_text())
        vocab = (model_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")
        if vocab and vocab[-1] == "":
            vocab.pop()
        return cls(config, vocab)

    def tokens(self, text: str) -> list[str]:
        return tokens(text, self.min_token_len, self.stopwords, self.max_len, self.url_token)

    def ids(self, text: str) -> list[int]:
        return [self.vocab.get(t, OOV_ID) for t in self.tokens(text)]


def tokens(text: str, min_token_len: int, stopwords: frozenset, max_len: int, url_token: str) -> list[str]:
    cleaned = CLEAN_RE.sub(lambda m: f" {url_token} " if m.group("url") else " ", text)
    out = []
    for m in TOKEN_RE.finditer(cleaned):
        tok = m.group(0).lower()
        if len(tok) < min_token_len or tok in stopwords:
            continue
        out.append(tok)
        if len(out) == max_len:
            break
    return out
