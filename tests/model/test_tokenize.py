"""End-to-end tests of `qattn tokenize` against independent Python references written for this test
(sharing no code with qattn):

- llama2.c's encode (run.c): a " " dummy prefix, one symbol per UTF-8 character (byte fallback
  id = byte + 3 for characters that are not pieces), then repeatedly merge the adjacent pair whose
  concatenation is the highest-scoring piece (leftmost on ties). Checked on the default model
  (stories260K.gguf, Karpathy's tok512) and on the llama2.c checkpoint + tok512.bin.
- GPT-2's encoder: the GPT-2 regex ('s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|
  \\s+(?!\\S)|\\s+) hand-coded with unicodedata, bytes -> GPT-2's byte-level alphabet, then OpenAI's BPE
  loop (merge every occurrence of the lowest-ranked pair until none is ranked). Checked on all 46
  llama.cpp test inputs with the gpt-2 vocabulary.

Plus the CLI contract: positional text, -f with exact bytes, --bos, --decode round trips, and exit
status 2 with a one-line message for bad ids and bad usage.

usage: test_tokenize.py path/to/qattn path/to/models
"""
import os
import struct
import subprocess
import sys
import tempfile
import unicodedata

QATTN = os.path.abspath(sys.argv[1]) if len(sys.argv) > 2 else sys.exit(__doc__)
MODELS = os.path.abspath(sys.argv[2])
STORIES = os.path.join(MODELS, "stories260K", "stories260K.gguf")
GPT2 = os.path.join(MODELS, "tokenizers", "ggml-vocab-gpt-2.gguf")
INPUTS = os.path.join(MODELS, "tokenizers", "ggml-vocab-phi-3.gguf.inp")

failures = []
checks = 0


def check(ok, message):
    global checks
    checks += 1
    if not ok:
        failures.append(message)
        print("FAIL:", message, flush=True)
    return ok


def qattn(args, stdin_bytes=None):
    """Runs qattn tokenize with args; returns (exit code, stdout bytes, stderr text)."""
    env = dict(os.environ)
    env.pop("QATTN_MODEL", None)  # the default model must be the shipped one
    p = subprocess.run([QATTN, "tokenize"] + [str(a) for a in args], capture_output=True, env=env, timeout=120)
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


def ids_of(stdout):
    return [int(x) for x in stdout.decode().split()]


# ------------------------------------------------------------------ GGUF metadata (reader for this test)

def read_gguf_metadata(path):
    data = open(path, "rb").read()
    pos = 0

    def take(fmt):
        nonlocal pos
        value = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return value[0]

    def string():
        nonlocal pos
        n = take("Q")
        s = data[pos:pos + n].decode("utf-8", "surrogateescape")
        pos += n
        return s

    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(kind):
        if kind == 8:
            return string()
        if kind == 9:
            elem, n = take("I"), take("Q")
            return [value(elem) for _ in range(n)]
        return take(scalar[kind])

    assert data[:4] == b"GGUF", path
    pos = 4
    take("I")
    take("Q")
    n_kv = take("Q")
    meta = {}
    for _ in range(n_kv):
        key = string()
        meta[key] = value(take("I"))
    return meta


# ------------------------------------------------------------------ llama2.c's encode

class Llama2cReference:
    def __init__(self, path):
        meta = read_gguf_metadata(path)
        self.pieces = meta["tokenizer.ggml.tokens"]
        self.scores = meta["tokenizer.ggml.scores"]
        self.lookup = {}
        for i, p in enumerate(self.pieces):
            self.lookup.setdefault(p, i)

    def encode(self, text, bos=False):
        # The GGUF spells llama2.c's " " as U+2581; llama2.c adds the dummy prefix for non-empty text.
        text = text.replace(" ", "\u2581")
        tokens = [1] if bos else []
        if text:
            tokens.append(self.lookup["\u2581"])
        for ch in text:
            if ch in self.lookup:
                tokens.append(self.lookup[ch])
            else:
                tokens += [b + 3 for b in ch.encode("utf-8")]
        while True:
            best = None  # (score, index, merged id)
            for i in range(len(tokens) - 1):
                merged = self.lookup.get(self.pieces[tokens[i]] + self.pieces[tokens[i + 1]])
                if merged is not None and (best is None or self.scores[merged] > best[0]):
                    best = (self.scores[merged], i, merged)
            if best is None:
                return tokens
            _, i, merged = best
            tokens[i:i + 2] = [merged]


# ------------------------------------------------------------------ GPT-2's encoder

def byte_level_alphabet():
    printable = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(0x100 + extra)
            extra += 1
    return table


def is_space(c):
    return c in " \t\n\v\f\r\x85" or unicodedata.category(c) in ("Zs", "Zl", "Zp")


def is_letter(c):
    return unicodedata.category(c).startswith("L")


def is_number(c):
    return unicodedata.category(c).startswith("N")


def is_other(c):
    return not (is_space(c) or is_letter(c) or is_number(c))


def gpt2_pieces(text):
    """The GPT-2 regex's matches, alternative by alternative, as a backtracking engine finds them."""
    pieces, i, n = [], 0, len(text)

    def run(start, pred):
        j = start
        while j < n and pred(text[j]):
            j += 1
        return j

    while i < n:
        end = None
        for c in ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d"):
            if text.startswith(c, i):
                end = i + len(c)
                break
        if end is None:
            for pred in (is_letter, is_number, is_other):  # ' ?X+' for each class
                start = i + 1 if text[i] == " " and i + 1 < n and pred(text[i + 1]) else i
                j = run(start, pred)
                if j > start:
                    end = j
                    break
        if end is None:  # \s+(?!\S), else \s+
            j = run(i, is_space)
            end = j if (j == n or j - 1 == i) else j - 1
        pieces.append(text[i:end])
        i = end
    return pieces


class Gpt2Reference:
    def __init__(self, path):
        meta = read_gguf_metadata(path)
        self.ids = {t: i for i, t in enumerate(meta["tokenizer.ggml.tokens"])}
        self.ranks = {tuple(m.split(" ")): r for r, m in enumerate(meta["tokenizer.ggml.merges"])}
        self.alphabet = byte_level_alphabet()

    def bpe(self, word):
        parts = list(word)
        while len(parts) > 1:
            pairs = {(parts[k], parts[k + 1]) for k in range(len(parts) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, k = [], 0
            while k < len(parts):
                if k + 1 < len(parts) and (parts[k], parts[k + 1]) == best:
                    merged.append(parts[k] + parts[k + 1])
                    k += 2
                else:
                    merged.append(parts[k])
                    k += 1
            parts = merged
        return parts

    def encode(self, text):
        out = []
        for piece in gpt2_pieces(text):
            word = "".join(self.alphabet[b] for b in piece.encode("utf-8"))
            out += [self.ids[p] for p in self.bpe(word)]
        return out


def read_test_inputs():
    raw = open(INPUTS, "rb").read().decode("utf-8")
    parts = raw.split("\n__ggml_vocab_test__\n")
    assert parts[-1] == "" and len(parts) == 47, len(parts)
    return parts[:-1]


# ------------------------------------------------------------------ tests

def test_default_model_matches_llama2c(ref):
    texts = ["Once upon a time", "Hello world", "The quick brown fox jumps over the lazy dog.",
             "\u00df\U0001F999 na\u00efve caf\u00e9", "  two  spaces ", "Lily's dog said: \"Yes!\"\n"]
    for text in texts:
        rc, out, err = qattn([text])
        check(rc == 0 and ids_of(out) == ref.encode(text), f"{text!r}: got {out!r} {err} want {ref.encode(text)}")
        check(out.endswith(b"\n") and out.count(b"\n") == 1, f"{text!r}: output is not one line: {out!r}")
    rc, out, _ = qattn(["Once upon a time"])
    check(ids_of(out) == [403, 407, 261, 378], f"'Once upon a time' -> {out!r}")  # ▁Once ▁upon ▁a ▁time
    rc, out, _ = qattn(["", "-m", STORIES])
    check(rc == 0 and out == b"\n", f"empty text must print an empty line, got {out!r}")
    rc, out, err = qattn(["--bos", "Once upon a time"])
    check(rc == 0 and ids_of(out) == ref.encode("Once upon a time", bos=True), f"--bos: {out!r} {err}")


def test_llama2c_checkpoint(ref):
    checkpoint = os.path.join(MODELS, "stories260K", "stories260K.bin")
    rc, out, err = qattn(["-m", checkpoint, "Once upon a time, Lily"])
    check(rc == 0 and ids_of(out) == ref.encode("Once upon a time, Lily"), f"llama2.c checkpoint: {out!r} {err}")


def test_file_bytes_exact_and_decode_round_trip(ref, tmp):
    text = "Once upon a time\nthere was a \u00df.\n"  # trailing newline is part of the input
    path = os.path.join(tmp, "prompt.txt")
    with open(path, "wb") as f:
        f.write(text.encode("utf-8"))
    rc, out, err = qattn(["-f", path])
    ids = ids_of(out)
    check(rc == 0 and ids == ref.encode(text), f"-f: {out!r} {err} want {ref.encode(text)}")
    check(ids[-1:] == [0x0A + 3], f"-f must keep the trailing newline (<0x0A> = 13): {ids}")
    ids_path = os.path.join(tmp, "ids.txt")
    with open(ids_path, "wb") as f:
        f.write(out)
    rc, back, err = qattn(["--decode", "-f", ids_path])
    check(rc == 0 and back == text.encode("utf-8"), f"--decode -f: {back!r} {err}")
    rc, back, err = qattn(["--decode", " ".join(map(str, [1] + ids + [2]))])  # BOS/EOS print nothing
    check(rc == 0 and back == text.encode("utf-8"), f"--decode with BOS/EOS: {back!r} {err}")
    rc, back, _ = qattn(["--decode", ""])
    check(rc == 0 and back == b"", f"--decode of no ids prints nothing: {back!r}")


def test_gpt2_vocab_all_inputs(tmp):
    ref = Gpt2Reference(GPT2)
    check(ref.encode("Hello world") == [15496, 995], "the GPT-2 reference itself is off")
    for i, text in enumerate(read_test_inputs()):
        path = os.path.join(tmp, f"in{i}.txt")
        with open(path, "wb") as f:
            f.write(text.encode("utf-8"))
        rc, out, err = qattn(["-m", GPT2, "-f", path])
        want = ref.encode(text)
        check(rc == 0 and ids_of(out) == want, f"gpt-2 input {i} {text[:40]!r}: got {out!r} {err} want {want}")
        if i % 5:
            continue  # decoding is checked on every 5th input here, on all of them in tokenizer_tests
        ids_path = os.path.join(tmp, f"ids{i}.txt")
        with open(ids_path, "wb") as f:
            f.write(out)
        rc, back, err = qattn(["-m", GPT2, "--decode", "-f", ids_path])
        check(rc == 0 and back == text.encode("utf-8"), f"gpt-2 input {i}: decode gave {back!r} {err}")


def expect_usage_error(args, fragments, what):
    rc, out, err = qattn(args)
    check(rc == 2, f"{what}: exit {rc}, want 2 (stderr: {err!r})")
    check(err.count("\n") == 1 and "error" in err, f"{what}: want one error line, got {err!r}")
    for f in fragments:
        check(f in err, f"{what}: {f!r} not in {err!r}")


def test_errors(tmp):
    expect_usage_error(["--decode", "1 600"], ["600", "512"], "id past the vocabulary")
    expect_usage_error(["--decode", "12 abc"], ["'abc'"], "non-numeric id")
    negative = os.path.join(tmp, "negative.txt")
    with open(negative, "w") as f:
        f.write("5 -3\n")
    expect_usage_error(["--decode", "-f", negative], ["-3", "512"], "negative id")
    expect_usage_error([], ["TEXT", "-f"], "no input")
    expect_usage_error(["hi", "-f", negative], ["not both"], "text and file")
    expect_usage_error(["-f", os.path.join(tmp, "absent.txt")], ["absent.txt"], "missing input file")
    expect_usage_error(["-m", os.path.join(tmp, "absent.gguf"), "hi"], ["absent.gguf"], "missing model")
    expect_usage_error(["--decode", "--bos", "1"], ["--bos"], "--bos with --decode")


def main():
    ref = Llama2cReference(STORIES)
    with tempfile.TemporaryDirectory(prefix="qattn_tokenize_") as tmp:
        test_default_model_matches_llama2c(ref)
        test_llama2c_checkpoint(ref)
        test_file_bytes_exact_and_decode_round_trip(ref, tmp)
        test_gpt2_vocab_all_inputs(tmp)
        test_errors(tmp)
    print(f"{checks - len(failures)}/{checks} checks passed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
