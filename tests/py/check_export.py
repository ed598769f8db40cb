#!/usr/bin/env python3
"""Checks a cotforge SFT export the way its users will load it.

usage: check_export.py DIR --format FMT --style STYLE [--row-group-rows N] [--expect-rows N]

- every data/*.parquet file: HF name pattern, zstd, row groups bounded, the
  documented schema for the format;
- README.md front matter: configs/data_files per split and row counts that
  match the files;
- dataset_info.json (LLaMA-Factory): entries point at existing files whose
  columns match the column mapping;
- loads with pyarrow, datasets.load_dataset("parquet", data_files=...),
  datasets.load_dataset(DIR) (the card's configs), polars and duckdb.
Exits non-zero with a message on the first failed check.
"""

import argparse
import glob
import json
import os
import re
import tempfile

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import duckdb  # noqa: E402
import polars as pl  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402
import datasets  # noqa: E402
from checks import checker  # noqa: E402

META = {"id": pa.string(), "seed_id": pa.string(), "model": pa.string(), "recipe": pa.string(),
        "reward": pa.float64(), "verified": pa.bool_()}


def msg_type(a, b):
    return pa.list_(pa.field("item", pa.struct([pa.field(a, pa.string(), nullable=False),
                                                 pa.field(b, pa.string(), nullable=False)]),
                             nullable=False))


EXPECTED = {
    "messages": {"messages": msg_type("role", "content")},
    "prompt-completion": {"prompt": pa.string(), "completion": pa.string()},
    "alpaca": {"instruction": pa.string(), "input": pa.string(), "output": pa.string(),
               "system": pa.string()},
    "sharegpt": {"conversations": msg_type("from", "value"), "system": pa.string()},
}
MSG = pa.struct([pa.field("role", pa.string(), nullable=False), pa.field("content", pa.string(), nullable=False)])
# Formats built from the search trees: their own metadata columns, no META.
TREE = {
    "preference": {"prompt": msg_type("role", "content"), "chosen": msg_type("role", "content"),
                   "rejected": msg_type("role", "content"), "chosen_message": MSG, "rejected_message": MSG,
                   "id": pa.string(), "seed_id": pa.string(), "model": pa.string(),
                   "chosen_id": pa.string(), "rejected_id": pa.string(), "shared_steps": pa.uint32(),
                   "chosen_verified": pa.bool_(), "rejected_verified": pa.bool_(),
                   "chosen_value": pa.float64(), "rejected_value": pa.float64()},
    "kto": {"prompt": msg_type("role", "content"), "completion": msg_type("role", "content"),
            "label": pa.bool_(), "conversation": msg_type("role", "content"),
            "id": pa.string(), "seed_id": pa.string(), "model": pa.string(),
            "verified": pa.bool_(), "value": pa.float64()},
    "prm": {"prompt": pa.string(),
            "completions": pa.list_(pa.field("item", pa.string(), nullable=False)),
            "labels": pa.list_(pa.field("item", pa.bool_(), nullable=False)),
            "values": pa.list_(pa.field("item", pa.float64(), nullable=False)),
            "visits": pa.list_(pa.field("item", pa.uint32(), nullable=False)),
            "id": pa.string(), "seed_id": pa.string(), "model": pa.string(), "verified": pa.bool_()},
}


fail, check = checker("check_export")


def front_matter(path):
    text = open(path, encoding="utf-8").read()
    check(text.startswith("---\n"), "README.md has no YAML front matter")
    end = text.index("\n---\n", 4)
    return yaml.safe_load(text[4:end]), text[end + 5:]


def assistant_text(fmt, row):
    if fmt == "preference":
        return row["chosen"][0]["content"]
    if fmt == "kto":
        return row["completion"][0]["content"]
    if fmt == "messages":
        return row["messages"][-1]["content"]
    if fmt == "sharegpt":
        return row["conversations"][-1]["value"]
    if fmt == "alpaca":
        return row["output"]
    return row["completion"]


def check_style(style, text, rid):
    has_reasoning = text.startswith("<Thought>") or text.startswith("<think>")
    if style == "marco" and has_reasoning:
        check(re.fullmatch(r"<Thought>\n.+\n</Thought>\n<Output>\n.+\n</Output>", text, re.S) is not None,
              f"{rid}: bad marco rendering: {text[:80]!r}")
        check(text.count("<Thought>") == 1 and text.count("<Output>") == 1, f"{rid}: repeated tags")
    elif style == "think" and has_reasoning:
        check(re.fullmatch(r"<think>\n.+\n</think>\n\n.+", text, re.S) is not None,
              f"{rid}: bad think rendering: {text[:80]!r}")
    check("<Thought>" not in text if style != "marco" else True, f"{rid}: marco tags in {style} style")
    check("<think>" not in text if style != "think" else True, f"{rid}: think tags in {style} style")
    return has_reasoning


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--format", required=True, choices=sorted(EXPECTED) + sorted(TREE))
    ap.add_argument("--style", required=True, choices=["marco", "think", "plain"])
    ap.add_argument("--row-group-rows", type=int, default=1000)
    ap.add_argument("--expect-rows", type=int)
    a = ap.parse_args()
    d = a.dir

    meta, body = front_matter(os.path.join(d, "README.md"))
    configs = meta["configs"]
    check(len(configs) == 1 and configs[0]["config_name"] == "default", f"configs: {configs}")
    split_counts = {s["name"]: s["num_examples"] for s in meta["dataset_info"]["splits"]}
    check(meta.get("license"), "no license in card")
    data_files = {}
    for entry in configs[0]["data_files"]:
        split, pattern = entry["split"], entry["path"]
        check(pattern == f"data/{split}-*", f"unexpected path pattern {pattern}")
        files = sorted(glob.glob(os.path.join(d, pattern)))
        check(files, f"split {split}: no files match {pattern}")
        n = len(files)
        for i, f in enumerate(files):
            name = os.path.relpath(f, d)
            check(name == f"data/{split}-{i:05d}-of-{n:05d}.parquet", f"bad file name {name}")
        data_files[split] = files
    check(set(data_files) == set(split_counts), f"configs splits {set(data_files)} != counted {set(split_counts)}")
    all_on_disk = sorted(glob.glob(os.path.join(d, "data", "*")))
    check(all_on_disk == sorted(f for fs in data_files.values() for f in fs),
          f"stray files in data/: {all_on_disk}")
    check("train" in data_files, "no train split")

    if a.format in TREE:
        expected = dict(TREE[a.format])
    else:
        expected = dict(EXPECTED[a.format])
        expected.update(META)
    ids = set()
    total = 0
    for split, files in data_files.items():
        rows = 0
        for f in files:
            pf = pq.ParquetFile(f)
            schema = pf.schema_arrow
            names = schema.names
            check(names == list(expected), f"{f}: columns {names} != {list(expected)}")
            for col, typ in expected.items():
                got = schema.field(col).type
                check(got == typ, f"{f}: column {col} is {got}, documented {typ}")
            md = pf.metadata
            for g in range(md.num_row_groups):
                rg = md.row_group(g)
                check(rg.num_rows <= a.row_group_rows, f"{f}: row group of {rg.num_rows} rows")
                for c in range(rg.num_columns):
                    check(rg.column(c).compression == "ZSTD", f"{f}: column {c} not zstd")
            t = pf.read()
            rows += t.num_rows
            for row in t.to_pylist():
                check(row["id"] not in ids, f"duplicate id {row['id']}")
                ids.add(row["id"])
                if a.format == "messages":
                    roles = [m["role"] for m in row["messages"]]
                    check(roles in (["user", "assistant"], ["system", "user", "assistant"]), f"roles {roles}")
                    check(all(m["content"].strip() for m in row["messages"]), f"{row['id']}: empty message")
                if a.format == "sharegpt":
                    check([m["from"] for m in row["conversations"]] == ["human", "gpt"], "sharegpt roles")
                if a.format == "preference":
                    check_style(a.style, row["rejected"][0]["content"], row["id"])
                if a.format != "prm":
                    check_style(a.style, assistant_text(a.format, row), row["id"])
        check(rows == split_counts[split], f"split {split}: {rows} rows, card says {split_counts[split]}")
        check(f"| {split} | {rows} |" in body, f"card body has no row count for {split}")
        total += rows
    if a.expect_rows is not None:
        check(total == a.expect_rows, f"{total} rows exported, expected {a.expect_rows}")

    # LLaMA-Factory entries
    info = json.load(open(os.path.join(d, "dataset_info.json"), encoding="utf-8"))
    if a.format == "prm":
        check(info == {}, f"prm: LLaMA-Factory has no PRM format, dataset_info.json should be {{}}: {info}")
    else:
        check(info, "empty dataset_info.json")
    covered = set()
    for key, entry in info.items():
        f = os.path.join(d, entry["file_name"])
        check(os.path.isfile(f), f"dataset_info {key}: missing {f}")
        covered.add(os.path.abspath(f))
        names = set(pq.ParquetFile(f).schema_arrow.names)
        check(set(entry["columns"].values()) <= names, f"dataset_info {key}: columns {entry['columns']}")
        want = "alpaca" if a.format in ("alpaca", "prompt-completion") else "sharegpt"
        check(entry["formatting"] == want, f"dataset_info {key}: formatting {entry['formatting']}")
        if a.format == "preference":
            check(entry.get("ranking") is True, f"dataset_info {key}: ranking {entry.get('ranking')}")
            first = pq.ParquetFile(f).read().to_pylist()[0]
            tags = entry["tags"]
            for k in ("chosen", "rejected"):
                m = first[entry["columns"][k]]
                check(isinstance(m, dict) and m[tags["role_tag"]] == tags["assistant_tag"],
                      f"dataset_info {key}: {k} column is not one assistant message: {m!r}")
            prompt_roles = [m[tags["role_tag"]] for m in first[entry["columns"]["messages"]]]
            check(prompt_roles[-1] == tags["user_tag"] and len([r for r in prompt_roles if r != tags["system_tag"]]) % 2 == 1,
                  f"dataset_info {key}: ranking prompt roles {prompt_roles}")
        elif a.format == "kto":
            first = pq.ParquetFile(f).read().to_pylist()[0]
            check(isinstance(first[entry["columns"]["kto_tag"]], bool), f"dataset_info {key}: kto_tag")
            roles = [m["role"] for m in first[entry["columns"]["messages"]]]
            check(roles[-1] == "assistant", f"dataset_info {key}: kto messages end with {roles[-1]}")
        elif want == "sharegpt":
            tags = entry["tags"]
            col = entry["columns"]["messages"]
            first = pq.ParquetFile(f).read().column(col)[0].as_py()
            roles = {m[tags["role_tag"]] for m in first}
            check({tags["user_tag"], tags["assistant_tag"]} <= roles | {tags.get("system_tag")},
                  f"dataset_info {key}: tags {tags} vs roles {roles}")
            check(all(tags["content_tag"] in m for m in first), f"dataset_info {key}: content_tag")
    if a.format != "prm":
        check(covered == {os.path.abspath(f) for fs in data_files.values() for f in fs},
              "dataset_info.json does not cover every data file")

    # datasets, with explicit data_files and through the card's configs
    with tempfile.TemporaryDirectory() as cache:
        ds = datasets.load_dataset("parquet", data_files=data_files, cache_dir=cache)
        for split, n in split_counts.items():
            check(ds[split].num_rows == n, f"datasets: {split} has {ds[split].num_rows} rows, card {n}")
        if a.format == "messages":
            m = ds["train"][0]["messages"]
            check(isinstance(m, list) and {"role", "content"} <= set(m[0]), f"datasets messages: {m!r}")
        ds2 = datasets.load_dataset(d, cache_dir=cache)
        check({s: ds2[s].num_rows for s in ds2} == split_counts,
              f"load_dataset(dir) splits {dict((s, ds2[s].num_rows) for s in ds2)} != {split_counts}")

    # polars and duckdb
    for split, n in split_counts.items():
        df = pl.read_parquet(os.path.join(d, f"data/{split}-*.parquet"))
        check(df.height == n, f"polars: {split} has {df.height} rows")
        q = f"SELECT count(*) FROM read_parquet('{os.path.join(d, 'data', split)}-*.parquet')"
        got = duckdb.sql(q).fetchall()[0][0]
        check(got == n, f"duckdb: {split} has {got} rows")
    if a.format == "messages":
        roles = duckdb.sql(
            f"SELECT DISTINCT messages[len(messages)].role FROM read_parquet('{d}/data/*.parquet')"
        ).fetchall()
        check(roles == [("assistant",)], f"duckdb last role {roles}")

    print(f"check_export: OK {a.format}/{a.style}: {total} rows, splits {split_counts}")


if __name__ == "__main__":
    main()
