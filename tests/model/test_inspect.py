"""`qattn inspect` end to end: the shipped GGUF model (checked against an independent header parser
written here), a vocab-only GGUF, a llama2.c checkpoint, and bad input (truncated, corrupted, missing:
exit code 2 with one line on stderr naming the problem).

usage: test_inspect.py path/to/qattn path/to/models"""
import json
import os
import struct
import subprocess
import sys
import tempfile

# The check collector the CLI tests share.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cli"))
from cli_common import Failures  # noqa: E402



def run(qattn, *args):
    return subprocess.run([qattn, "inspect", *args], capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------- an independent GGUF header reader

SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
BLOCK = {0: (1, 4), 1: (1, 2), 2: (32, 18), 8: (32, 34), 30: (1, 2)}  # ggml type -> (elements, bytes) per block


def parse_gguf(data):
    pos = 0

    def take(fmt):
        nonlocal pos
        (v,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return v

    def string():
        nonlocal pos
        n = take("<Q")
        s = data[pos:pos + n].decode("utf-8", "replace")
        pos += n
        return s

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            et, n = take("<I"), take("<Q")
            return [value(et) for _ in range(n)]
        return take(SCALARS[t])

    assert data[:4] == b"GGUF"
    pos = 4
    version, n_tensors, n_kv = take("<I"), take("<Q"), take("<Q")
    meta = {}
    for _ in range(n_kv):
        key = string()
        meta[key] = value(take("<I"))
    tensors = []
    for _ in range(n_tensors):
        name = string()
        dims = [take("<Q") for _ in range(take("<I"))]
        ggml_type, offset = take("<I"), take("<Q")
        elements = 1
        for d in dims:
            elements *= d
        per, size = BLOCK[ggml_type]
        tensors.append({"name": name, "dims": dims, "elements": elements, "bytes": elements // per * size, "offset": offset})
    return version, meta, tensors


# ---------------------------------------------------------------- checks

def check_gguf_json(f, qattn, path):
    r = run(qattn, path, "--json")
    if not f.check(r.returncode == 0, f"inspect --json {path}: exit {r.returncode}, stderr {r.stderr!r}"):
        return
    out = json.loads(r.stdout)
    version, meta, tensors = parse_gguf(open(path, "rb").read())
    f.check(out["format"] == "gguf" and out["version"] == version, f"{path}: format/version {out['format']} {out['version']}")
    f.check(out["file_bytes"] == os.path.getsize(path), f"{path}: file_bytes {out['file_bytes']}")
    f.check([m["key"] for m in out["metadata"]] == list(meta), f"{path}: metadata keys differ from the file's")
    for m in out["metadata"]:
        want = meta[m["key"]]
        if isinstance(want, list):
            f.check(m["count"] == len(want), f"{path}: {m['key']} count {m.get('count')} != {len(want)}")
            head = want[:len(m["value"])]
            f.check(len(m["value"]) == min(8, len(want)), f"{path}: {m['key']} shows {len(m['value'])} elements")
            if m["type"] in ("array of f32", "array of f64"):
                f.check(all(abs(a - b) <= 1e-6 * max(1.0, abs(b)) for a, b in zip(m["value"], head)), f"{path}: {m['key']} values")
            else:
                f.check(m["value"] == head, f"{path}: {m['key']} values {m['value']} != {head}")
        elif m["type"] == "f32":
            f.check(abs(m["value"] - want) <= 1e-6 * max(1.0, abs(want)), f"{path}: {m['key']} = {m['value']} != {want}")
        else:
            f.check(m["value"] == want, f"{path}: {m['key']} = {m['value']!r} != {want!r}")
    got = [{k: t[k] for k in ("name", "dims", "elements", "bytes", "offset")} for t in out["tensors"]]
    f.check(got == tensors, f"{path}: tensors differ from the file's")
    f.check(out["totals"] == {"tensors": len(tensors), "parameters": sum(t["elements"] for t in tensors),
                              "bytes": sum(t["bytes"] for t in tensors)}, f"{path}: totals {out['totals']}")
    return out


def check_stories(f, qattn, models):
    path = os.path.join(models, "stories260K", "stories260K.gguf")
    out = check_gguf_json(f, qattn, path)
    if out:
        f.check(len(out["tensors"]) == 48 and all(t["type"] == "f32" for t in out["tensors"]), "stories260K: 48 f32 tensors")
        f.check(out["alignment"] == 32, "stories260K: alignment 32")
        emb = [m for m in out["metadata"] if m["key"] == "llama.embedding_length"]
        f.check(emb and emb[0]["value"] == 64 and emb[0]["type"] == "u32", f"stories260K: embedding_length {emb}")
    r = run(qattn, path)
    f.check(r.returncode == 0, f"inspect {path}: exit {r.returncode}")
    text = r.stdout
    for needle in ("GGUF v3", "alignment 32", "metadata: 19 keys", "tensors: 48", "llama.embedding_length",
                   "blk.4.ffn_down.weight", "[172, 64]", "(512 elements)", "totals: 48 tensors, 292800 parameters, 1171200 bytes"):
        f.check(needle in text, f"inspect {path}: output lacks {needle!r}")
    f.check("\"<unk>\", \"<s>\", \"</s>\"" in text and "..." in text, "inspect: the tokens array is abbreviated with its first elements")


def check_vocab_only(f, qattn, models):
    path = os.path.join(models, "tokenizers", "ggml-vocab-phi-3.gguf")
    out = check_gguf_json(f, qattn, path)
    if out:
        f.check(out["tensors"] == [] and out["totals"]["parameters"] == 0, "phi-3 vocab: no tensors")
        tokens = [m for m in out["metadata"] if m["key"] == "tokenizer.ggml.tokens"]
        f.check(tokens and tokens[0]["count"] == 32064, "phi-3 vocab: 32064 tokens")
    r = run(qattn, path)
    f.check(r.returncode == 0 and "tensors: 0" in r.stdout and "(32064 elements)" in r.stdout, "inspect phi-3 text output")


def check_llama2c(f, qattn, models):
    path = os.path.join(models, "stories260K", "stories260K.bin")
    r = run(qattn, path, "--json")
    if not f.check(r.returncode == 0, f"inspect {path}: exit {r.returncode} {r.stderr!r}"):
        return
    out = json.loads(r.stdout)
    f.check(out["format"] == "llama2c" and out["file_bytes"] == os.path.getsize(path), "llama2.c: format and size")
    f.check(len(out["tensors"]) == 47 and out["totals"]["parameters"] == 260032, f"llama2.c: totals {out['totals']}")
    meta = {m["key"]: m for m in out["metadata"]}
    f.check(meta["llama.context_length"]["value"] == 512, "llama2.c: context_length 512")
    f.check(meta["tokenizer.ggml.tokens"]["value"][:3] == ["<unk>", "<s>", "</s>"], "llama2.c: BOS/EOS spelt <s> </s>")
    tok = os.path.join(models, "aidreams260K", "tok512.bin")
    r = run(qattn, path, "--tokenizer", tok, "--json")
    f.check(r.returncode == 0 and json.loads(r.stdout)["metadata"], f"inspect --tokenizer: exit {r.returncode}")
    r = run(qattn, path)
    f.check(r.returncode == 0 and "llama2.c checkpoint" in r.stdout and "tensors: 47" in r.stdout, "inspect llama2.c text output")


def expect_error(f, qattn, args, needles, what):
    r = run(qattn, *args)
    lines = r.stderr.splitlines()
    f.check(r.returncode == 2, f"{what}: exit code {r.returncode}, want 2 (stderr {r.stderr!r})")
    f.check(len(lines) == 1 and r.stdout == "", f"{what}: want one line on stderr and no stdout, got {r.stderr!r} / {r.stdout[:200]!r}")
    for n in needles:
        f.check(n in r.stderr, f"{what}: message lacks {n!r}: {r.stderr!r}")


def check_errors(f, qattn, models):
    data = open(os.path.join(models, "stories260K", "stories260K.gguf"), "rb").read()
    with tempfile.TemporaryDirectory(prefix="qattn_inspect_") as tmp:
        cut = os.path.join(tmp, "cut.gguf")
        open(cut, "wb").write(data[:5000])
        expect_error(f, qattn, [cut], [cut, "truncated", "extends past the end of the file (5000 bytes)"], "truncated GGUF")
        _, _, tensors = parse_gguf(data)
        bad = bytearray(data)
        name = b"blk.0.attn_q.weight"
        at = data.index(name) + len(name) + 4 + 2 * 8  # after n_dims and two dims: the ggml type
        bad[at:at + 4] = struct.pack("<I", 99)
        corrupt = os.path.join(tmp, "corrupt.gguf")
        open(corrupt, "wb").write(bytes(bad))
        expect_error(f, qattn, [corrupt], [corrupt, "'blk.0.attn_q.weight'", "unknown ggml type 99"], "corrupted tensor type")
        huge = bytearray(data)
        huge[8:16] = struct.pack("<Q", 1 << 60)
        hpath = os.path.join(tmp, "huge.gguf")
        open(hpath, "wb").write(bytes(huge))
        expect_error(f, qattn, [hpath, "--json"], [hpath, "1152921504606846976 tensors"], "huge tensor count")
        missing = os.path.join(tmp, "missing.gguf")
        expect_error(f, qattn, [missing], [f"cannot open '{missing}': No such file or directory"], "missing file")
        lone = os.path.join(tmp, "model.bin")
        open(lone, "wb").write(open(os.path.join(models, "stories260K", "stories260K.bin"), "rb").read())
        expect_error(f, qattn, [lone], ["tok512.bin", "tokenizer.bin"], "llama2.c checkpoint without a tokenizer")
        cut_bin = os.path.join(tmp, "cut.bin")
        open(cut_bin, "wb").write(open(lone, "rb").read()[:100000])
        expect_error(f, qattn, [cut_bin, "--tokenizer", os.path.join(models, "stories260K", "tok512.bin")],
                     [cut_bin, "100000 bytes"], "truncated llama2.c checkpoint")
    expect_error(f, qattn, [], ["model"], "no model given")


def main():
    if len(sys.argv) < 3:
        sys.exit(f"usage: {sys.argv[0]} path/to/qattn path/to/models")
    qattn, models = os.path.abspath(sys.argv[1]), sys.argv[2]
    f = Failures()
    check_stories(f, qattn, models)
    check_vocab_only(f, qattn, models)
    check_llama2c(f, qattn, models)
    check_errors(f, qattn, models)
    f.finish()


if __name__ == "__main__":
    main()
