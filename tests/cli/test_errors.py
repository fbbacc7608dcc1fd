"""Bad input to qattn: each case must exit with status 2, print exactly one line on stderr that names
the problem, print nothing on stdout, and never crash. Also checks --help and --version.

usage: test_errors.py path/to/qattn"""
import os
import struct

import numpy as np

from cli_common import Failures, qattn_path, run, scratch_dir

GOOD_SHAPES = {"q": (5, 4, 8), "k": (7, 2, 8), "v": (7, 2, 6)}


def npy_bytes(header, data=b"", version=(1, 0)):
    """A .npy file with a hand-written header dict (padded as NumPy pads it) and raw data."""
    text = header.encode("latin1")
    preamble = 10 if version[0] == 1 else 12
    pad = (-(preamble + len(text) + 1)) % 64
    text += b" " * pad + b"\n"
    length = struct.pack("<H", len(text)) if version[0] == 1 else struct.pack("<I", len(text))
    return b"\x93NUMPY" + bytes(version) + length + text + data


def f32_header(shape):
    dims = ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "")
    return "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }" % dims


def write(tmp, name, content):
    path = os.path.join(tmp, name)
    if isinstance(content, np.ndarray):
        np.save(path, content)
    else:
        with open(path, "wb") as fh:
            fh.write(content)
    return path


def make_files(tmp, rng):
    """Valid inputs plus every kind of broken file, by name."""
    good = {x: rng.standard_normal(s).astype(np.float32) for x, s in GOOD_SHAPES.items()}
    files = {x: write(tmp, x + ".npy", a) for x, a in good.items()}
    raw_q = open(files["q"], "rb").read()
    qdata = good["q"].tobytes()
    bad = {
        "f64": good["q"].astype(np.float64),
        "i32": good["q"].astype(np.int32),
        "f16": good["q"].astype(np.float16),
        "bigendian": good["q"].astype(">f4"),
        "fortran": np.asfortranarray(good["q"]),
        "rank2": good["q"].reshape(20, 8),
        "rank4": good["q"].reshape(5, 2, 2, 8),
        "empty_dim": np.zeros((0, 4, 8), np.float32),
        "truncated_data": raw_q[:-5],
        "truncated_header": raw_q[:40],
        "truncated_preamble": raw_q[:9],
        "empty": b"",
        "text": b"hello, this is not an array\n",
        "version9": raw_q[:6] + bytes([9, 0]) + raw_q[8:],
        "huge_header_len": raw_q[:8] + struct.pack("<H", 60000) + raw_q[10:200],
        "unknown_key": npy_bytes(f32_header((5, 4, 8)).replace("shape", "shope"), qdata),
        "no_brace": npy_bytes("'descr': '<f4', 'fortran_order': False, 'shape': (5, 4, 8)", qdata),
        "bad_bool": npy_bytes(f32_header((5, 4, 8)).replace("False", "Nope"), qdata),
        "negative_dim": npy_bytes(f32_header((5, 4, 8)).replace("(5,", "(-5,"), qdata),
        "huge_dims": npy_bytes(f32_header((1 << 30, 1 << 30, 8)), qdata),
        "shape_too_big": npy_bytes(f32_header((6, 4, 8)), qdata),
        "trailing_bytes": npy_bytes(f32_header((5, 4, 8)), qdata + b"\0" * 12),
        "structured": npy_bytes("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (5, 4, 8), }", qdata),
        "k_dqk": rng.standard_normal((7, 2, 6)).astype(np.float32),
        "v_nkv": rng.standard_normal((6, 2, 6)).astype(np.float32),
        "k_3heads": rng.standard_normal((7, 3, 8)).astype(np.float32),
        "v_3heads": rng.standard_normal((7, 3, 6)).astype(np.float32),
        "sinks_wrong": np.zeros(3, np.float32),
        "sinks_2d": np.zeros((1, 4), np.float32),
        "sinks_f64": np.zeros(4, np.float64),
    }
    for name, content in bad.items():
        files[name] = write(tmp, name + ".npy", content)
    # Valid files in the other format versions must be accepted.
    files["q_v2"] = write(tmp, "q_v2.npy", npy_bytes(f32_header((5, 4, 8)), qdata, version=(2, 0)))
    files["q_v3"] = write(tmp, "q_v3.npy", npy_bytes(f32_header((5, 4, 8)), qdata, version=(3, 0)))
    return files


def attend(files, tmp, q="q", k="k", v="v", extra=()):
    return ["attend", "--q", files[q], "--k", files[k], "--v", files[v],
            "--out", os.path.join(tmp, "o.npy")] + list(extra)


def error_cases(files, tmp):
    """(description, args, words the message must contain (any one of each tuple, case-insensitive))."""
    a = lambda **kw: attend(files, tmp, **kw)  # noqa: E731
    missing = os.path.join(tmp, "does_not_exist.npy")
    return [
        ("missing file", attend({**files, "q": missing}, tmp), ["does_not_exist.npy", "no such file"]),
        ("directory", attend({**files, "k": tmp}, tmp), ["--k", "cannot be read"]),
        ("float64", a(q="f64"), ["f64.npy", "float64"]),
        ("int32", a(k="i32"), ["int32"]),
        ("float16 file", a(q="f16"), ["float16"]),
        ("big-endian", a(q="bigendian"), ["big-endian"]),
        ("fortran order", a(q="fortran"), ["fortran"]),
        ("rank 2", a(q="rank2"), ["3 dimensions"]),
        ("rank 4", a(v="rank4"), ["3 dimensions"]),
        ("empty dimension", a(q="empty_dim"), ["at least 1"]),
        ("truncated data", a(q="truncated_data"), ["truncated"]),
        ("truncated header", a(q="truncated_header"), ["truncated"]),
        ("truncated preamble", a(q="truncated_preamble"), ["truncated"]),
        ("empty file", a(k="empty"), ["not a .npy"]),
        ("text file", a(k="text"), ["not a .npy"]),
        ("format version 9", a(q="version9"), ["version 9.0"]),
        ("header length past the end", a(q="huge_header_len"), ["truncated"]),
        ("unknown header key", a(q="unknown_key"), ["malformed", "shope"]),
        ("header without braces", a(q="no_brace"), ["malformed"]),
        ("bad fortran_order", a(q="bad_bool"), ["malformed", "fortran_order"]),
        ("negative dimension", a(q="negative_dim"), ["malformed", "shape"]),
        ("absurd dimensions", a(q="huge_dims"), ["more elements"]),
        ("shape larger than data", a(q="shape_too_big"), ["truncated"]),
        ("trailing bytes", a(q="trailing_bytes"), ["unexpected bytes"]),
        ("structured dtype", a(q="structured"), ["structured"]),
        ("d_qk mismatch", a(k="k_dqk"), ["d_qk"]),
        ("n_kv mismatch", a(v="v_nkv"), ["n_kv"]),
        ("H_q not a multiple of H_k", a(k="k_3heads"), ["multiple", "H_k"]),
        ("H_q not a multiple of H_v", a(v="v_3heads"), ["multiple", "H_v"]),
        ("sink logits wrong length", a(extra=["--sink-logits", files["sinks_wrong"]]), ["--sink-logits", "(4,)"]),
        ("sink logits rank 2", a(extra=["--sink-logits", files["sinks_2d"]]), ["--sink-logits"]),
        ("sink logits float64", a(extra=["--sink-logits", files["sinks_f64"]]), ["--sink-logits", "float64"]),
        ("unknown flag", a(extra=["--bogus"]), ["--bogus"]),
        ("unknown flag before required ones", ["attend", "--bogus"], ["--bogus"]),
        ("stray argument", a(extra=["stray"]), ["stray"]),
        ("missing --out", ["attend", "--q", files["q"], "--k", files["k"], "--v", files["v"]], ["--out"]),
        ("window one number", a(extra=["--window", "3"]), ["--window"]),
        ("window words", a(extra=["--window", "a,b"]), ["--window"]),
        ("window three numbers", a(extra=["--window", "1,2,3"]), ["--window"]),
        ("window below -1", a(extra=["--window=-2,0"]), ["--window"]),
        ("window empty side", a(extra=["--window", "4,"]), ["--window"]),
        ("window without value", a(extra=["--window"]), ["--window"]),
        ("negative sinks", a(extra=["--sinks", "-1"]), ["--sinks"]),
        ("sinks not a number", a(extra=["--sinks", "many"]), ["--sinks"]),
        ("negative softcap", a(extra=["--softcap", "-1"]), ["--softcap"]),
        ("nan softcap", a(extra=["--softcap", "nan"]), ["--softcap"]),
        ("infinite scale", a(extra=["--scale", "inf"]), ["--scale"]),
        ("unknown dtype", a(extra=["--dtype", "f64"]), ["--dtype"]),
        ("negative threads", a(extra=["--threads", "-1"]), ["--threads"]),
        ("unwritable output", attend(files, tmp)[:-1] + [os.path.join(tmp, "no_dir", "o.npy")],
         ["--out", "cannot be written"]),
        ("unwritable lse", a(extra=["--lse", os.path.join(tmp, "no_dir", "l.npy")]), ["--lse"]),
        ("no command", [], ["subcommand"]),
        ("unknown command", ["frobnicate"], ["frobnicate"]),
        ("bench without a subcommand", ["bench"], ["subcommand"]),
        ("unknown bench", ["bench", "speed"], ["speed"]),
        ("bench heads", ["bench", "attention", "--hq", "6", "--hkv", "4"], ["multiple"]),
        ("bench zero rows", ["bench", "attention", "--nq", "0"], ["--nq"]),
        ("bench dtype", ["bench", "attention", "--dtype", "int8"], ["--dtype"]),
        ("bench repeats", ["bench", "attention", "--repeats", "0"], ["--repeats"]),
        ("bench too large", ["bench", "attention", "--nkv", "100000000000"], ["memory"]),
        ("bench not a number", ["bench", "attention", "--nq", "lots"], ["--nq"]),
        ("bench peak threads", ["bench", "peak", "--threads", "-2"], ["--threads"]),
        ("bench peak unknown flag", ["bench", "peak", "--fast"], ["--fast"]),
    ]


def check_error(f, qattn, name, args, words):
    r = run(qattn, args, timeout=60)
    f.check(r.returncode == 2, f"{name}: exit status {r.returncode}, expected 2 (stderr: {r.stderr.strip()!r})")
    lines = r.stderr.splitlines()
    if not f.check(len(lines) == 1 and lines[0].strip(), f"{name}: stderr is not one line: {r.stderr!r}"):
        return
    msg = lines[0].lower()
    for w in words:
        f.check(w.lower() in msg, f"{name}: message does not mention {w!r}: {lines[0]!r}")
    f.check(r.stdout == "", f"{name}: unexpected stdout {r.stdout[:200]!r}")


def check_accepted(f, qattn, files, tmp):
    for q in ("q_v2", "q_v3"):
        r = run(qattn, attend(files, tmp, q=q))
        f.check(r.returncode == 0, f"{q}: valid .npy rejected: {r.stderr.strip()}")
    r = run(qattn, attend(files, tmp, extra=["--window", "-1,0"]))  # a leading -1 as a separate word
    f.check(r.returncode == 0, f"--window -1,0 rejected: {r.stderr.strip()}")


def check_help(f, qattn):
    for args, words in ((["--help"], ["attend", "bench"]), (["attend", "--help"], ["--window", "alibi"]),
                        (["bench", "--help"], ["attention", "peak"]),
                        (["bench", "attention", "--help"], ["--hq", "--json"]),
                        (["bench", "peak", "--help"], ["--quick"])):
        r = run(qattn, args)
        f.check(r.returncode == 0, f"{args}: exit {r.returncode}")
        for w in words:
            f.check(w in r.stdout, f"{args}: help does not mention {w}")
    r = run(qattn, ["--version"])
    f.check(r.returncode == 0 and r.stdout.startswith("qattn "), f"--version: {r.returncode} {r.stdout!r}")


def main():
    qattn = qattn_path()
    f = Failures()
    with scratch_dir() as tmp:
        files = make_files(tmp, np.random.default_rng(7))
        for name, args, words in error_cases(files, tmp):
            check_error(f, qattn, name, args, words)
        check_accepted(f, qattn, files, tmp)
    check_help(f, qattn)
    f.finish()


if __name__ == "__main__":
    main()
