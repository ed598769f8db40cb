#!/usr/bin/env python3
"""Checks cotforge exports the way TRL will read them, with a real tokenizer.

usage: check_trl.py --gguf MODEL.gguf [--prm-threshold T] FORMAT=DIR...

FORMAT is messages, preference, kto or prm. For every export:
- loads it with datasets.load_dataset("parquet", data_files=...) (one
  dataset per split);
- messages / preference / kto: every row is conversational for
  trl.data_utils.is_conversational, and goes through
  trl.data_utils.maybe_apply_chat_template with the GGUF's tokenizer and chat
  template; the rendered text holds every message, in order, and tokenizes;
- prm: every row is *not* conversational (TRL's stepwise supervision is the
  standard format), has prompt: str, completions: list[str], labels:
  list[bool] of the same length (what TRL's PRM trainer reads), values in
  [0, 1] with labels == values > threshold, and visits.

The tokenizer is transformers' GGUF tokenizer (vocabulary, merges, special
tokens and chat template converted from the file by
transformers.integrations.gguf). AutoTokenizer.from_pretrained(dir,
gguf_file=...) needs torch in every transformers release (checked: 4.46.3,
4.57.6, 5.24.0; the GGUF metadata reader imports it, only tensor loading uses
it), and PyPI's torch for x86-64 is the CUDA build (GBs). Without torch, the
metadata reader alone is provided by llama.cpp's `gguf` package and the
tokenizer is loaded with PreTrainedTokenizerFast.from_pretrained(dir,
gguf_file=...), the same conversion. With torch installed, both load and every
row must render and tokenize identically with both. The path taken is printed.
Exits non-zero with a message on the first failed check.
"""

import argparse
import glob
import os
import sys
import tempfile
import types

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import datasets  # noqa: E402
from checks import checker  # noqa: E402
from trl.data_utils import is_conversational, maybe_apply_chat_template  # noqa: E402


fail, check = checker("check_trl")


def gguf_metadata(path, string_arrays=()):
    """transformers' `read_gguf_metadata` contract, read with gguf-py."""
    from gguf import GGUFReader, GGUFValueType

    r = GGUFReader(path)
    md = {}
    for key, f in r.fields.items():
        if key.startswith("GGUF."):
            continue
        t = f.types[0]
        if t == GGUFValueType.ARRAY:
            if f.types[-1] == GGUFValueType.STRING:
                md[key] = ([bytes(f.parts[i]).decode("utf-8") for i in f.data]
                           if key in string_arrays else len(f.data))
            else:
                md[key] = [f.parts[i].tolist()[0] for i in f.data]
        elif t == GGUFValueType.STRING:
            md[key] = bytes(f.parts[f.data[0]]).decode("utf-8")
        else:
            md[key] = f.parts[f.data[0]].tolist()[0]
    return md, tuple(t.name for t in r.tensors)


def torch_free_tokenizer(d, name):
    """transformers' GGUF tokenizer conversion, its metadata read by gguf-py."""
    from transformers import PreTrainedTokenizerFast

    real = sys.modules.get("transformers.integrations.gguf.reader")
    shim = types.ModuleType("transformers.integrations.gguf.reader")
    shim.read_gguf_metadata = gguf_metadata
    sys.modules[shim.__name__] = shim
    try:
        return PreTrainedTokenizerFast.from_pretrained(d, gguf_file=name)
    finally:
        if real is not None:
            sys.modules[shim.__name__] = real
        else:
            del sys.modules[shim.__name__]


def load_tokenizer(gguf_path):
    """(tokenizer, how, twin): with torch, AutoTokenizer's tokenizer and the
    torch-free one as its twin (every rendered row must tokenize the same with
    both: the proof that the torch-free path CI takes is transformers' own)."""
    d, name = os.path.split(os.path.abspath(gguf_path))
    try:
        import torch  # noqa: F401
    except ImportError:
        how = "PreTrainedTokenizerFast.from_pretrained(gguf_file=...), gguf-py metadata (no torch)"
        return torch_free_tokenizer(d, name), how, None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    twin = torch_free_tokenizer(d, name)
    check(tok.get_vocab() == twin.get_vocab(), "AutoTokenizer and the torch-free path: vocabularies differ")
    check(tok.chat_template == twin.chat_template, "AutoTokenizer and the torch-free path: chat templates differ")
    check(tok.all_special_tokens == twin.all_special_tokens,
          "AutoTokenizer and the torch-free path: special tokens differ")
    how = "AutoTokenizer.from_pretrained(gguf_file=...), checked row by row against the torch-free path"
    return tok, how, twin


def load(d):
    files = {}
    for f in sorted(glob.glob(os.path.join(d, "data", "*.parquet"))):
        split = os.path.basename(f).split("-")[0]
        files.setdefault(split, []).append(f)
    check(files, f"{d}: no data files")
    with tempfile.TemporaryDirectory() as cache:
        ds = datasets.load_dataset("parquet", data_files=files, cache_dir=cache)
        return {s: [dict(r) for r in ds[s]] for s in ds}


def in_order(text, parts, rid):
    at = 0
    for p in parts:
        i = text.find(p, at)
        check(i >= 0, f"{rid}: {p[:60]!r} missing from the rendered text (or out of order)")
        at = i + len(p)


def check_conversational(fmt, row, tok, twin=None):
    rid = row["id"]
    check(is_conversational(row), f"{rid}: not conversational for TRL")
    out = maybe_apply_chat_template(row, tok)
    if twin is not None:
        other = maybe_apply_chat_template(row, twin)
        check(other == out, f"{rid}: rendered differently by the torch-free tokenizer")
        for k, v in out.items():
            if isinstance(v, str):
                check(tok(v)["input_ids"] == twin(v)["input_ids"],
                      f"{rid}: {k} tokenizes differently with the torch-free tokenizer")
    if fmt == "messages":
        text = out["text"]
        in_order(text, [m["content"] for m in row["messages"]], rid)
        check(len(tok(text)["input_ids"]) > 0, f"{rid}: no tokens")
        return
    prompt = out["prompt"]
    check(isinstance(prompt, str), f"{rid}: prompt not rendered to text")
    in_order(prompt, [m["content"] for m in row["prompt"]], rid)
    check(prompt.rstrip().endswith("assistant"), f"{rid}: no generation prompt: {prompt[-40:]!r}")
    if fmt == "preference":
        check(set(out) >= {"prompt", "chosen", "rejected"}, f"{rid}: keys {sorted(out)}")
        for k in ("chosen", "rejected"):
            check(len(row[k]) == 1 and row[k][0]["role"] == "assistant", f"{rid}: {k} {row[k]!r}")
            check(out[k].startswith(row[k][0]["content"]), f"{rid}: {k} rendered as {out[k][:60]!r}")
            check(len(tok(prompt + out[k])["input_ids"]) > len(tok(prompt)["input_ids"]),
                  f"{rid}: {k} adds no tokens")
        check(row["chosen_message"] == row["chosen"][0], f"{rid}: chosen_message differs")
        check(row["rejected_message"] == row["rejected"][0], f"{rid}: rejected_message differs")
        check(row["chosen"] != row["rejected"], f"{rid}: chosen == rejected")
    else:  # kto
        check(set(out) >= {"prompt", "completion", "label"}, f"{rid}: keys {sorted(out)}")
        check(isinstance(out["label"], bool), f"{rid}: label {out['label']!r}")
        check(out["completion"].startswith(row["completion"][0]["content"]), f"{rid}: completion")
        check(row["conversation"] == row["prompt"] + row["completion"], f"{rid}: conversation")


def check_prm(row, threshold):
    rid = row["id"]
    check(not is_conversational(row), f"{rid}: PRM rows are TRL's standard (not conversational) format")
    check(maybe_apply_chat_template(row, None) == row, f"{rid}: changed by maybe_apply_chat_template")
    check(isinstance(row["prompt"], str) and row["prompt"], f"{rid}: prompt")
    n = len(row["completions"])
    check(n >= 1 and all(isinstance(c, str) for c in row["completions"]), f"{rid}: completions")
    for k in ("labels", "values", "visits"):
        check(len(row[k]) == n, f"{rid}: {k} has {len(row[k])} items, completions {n}")
    check(all(isinstance(b, bool) for b in row["labels"]), f"{rid}: labels not bool")
    check(all(0.0 <= v <= 1.0 for v in row["values"]), f"{rid}: values {row['values']}")
    check(row["labels"] == [v > threshold for v in row["values"]], f"{rid}: labels != values > {threshold}")
    check(all(isinstance(v, int) and v >= 0 for v in row["visits"]), f"{rid}: visits")
    check(row["values"][-1] == (1.0 if row["verified"] else 0.0), f"{rid}: answer step value")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--prm-threshold", type=float, default=0.0)
    ap.add_argument("exports", nargs="+", metavar="FORMAT=DIR")
    a = ap.parse_args()
    tok, how, twin = load_tokenizer(a.gguf)
    check(tok.chat_template, f"{a.gguf}: no chat template")
    print(f"check_trl: tokenizer {type(tok).__name__} via {how}, {len(tok)} tokens")
    for spec in a.exports:
        fmt, d = spec.split("=", 1)
        check(fmt in ("messages", "preference", "kto", "prm"), f"unknown format {fmt}")
        splits = load(d)
        n = 0
        for split, rows in splits.items():
            for row in rows:
                if fmt == "prm":
                    check_prm(row, a.prm_threshold)
                else:
                    check_conversational(fmt, row, tok, twin)
                n += 1
        check(n > 0, f"{fmt}: {d} has no rows")
        print(f"check_trl: OK {fmt}: {n} rows in splits {sorted(splits)}")


if __name__ == "__main__":
    main()
