"""The "## Reliability" table of BENCHMARKS.md, from the records the reliability tests append.

    nnUNet_def_n_proc=2 nnUNet_n_proc_DA=2 python -m pytest tests/test_reliability_*.py -q
    python benchmarks/reliability_table.py                  # print the table of the latest test session
    python benchmarks/reliability_table.py --write BENCHMARKS.md   # replace (or append) its "## Reliability"

Each test appends one JSON line per fault injected, bad input tried or hostile file offered to
``$SAM3D_RELIABILITY_LOG`` (default ``/tmp/sam3d_reliability/records.jsonl``): suite (faults / inputs /
hostile), stage, fault, outcome, lost (outputs or epochs lost), session. Only the latest session is counted
(``--session`` picks another). Nothing here runs the tests; the numbers are what they observed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import Counter, OrderedDict
from pathlib import Path

DEFAULT_LOG = os.environ.get("SAM3D_RELIABILITY_LOG", "/tmp/sam3d_reliability/records.jsonl")
SECTION = "## Reliability"
SUITE_TITLES = OrderedDict([("faults", "Faults injected"), ("inputs", "Bad inputs tried"),
                            ("hostile", "Hostile files and names offered")])


def load(path: str, session: str | None = None) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                records.append(json.loads(line))
    if not records:
        raise SystemExit(f"{path}: no records")
    if session is None:  # the session of the most recent record
        session = max(records, key=lambda r: r["time"])["session"]
    chosen = [r for r in records if r["session"] == session]
    if not chosen:
        raise SystemExit(f"{path}: no records of session {session}")
    return chosen


STAGES = ["conversion", "planning", "training", "prediction", "evaluation"]
KIND_NAMES = OrderedDict([
    ("nan_intensity", "NaN intensities"), ("inf_intensity", "infinite intensities"),
    ("zero_spacing", "zero voxel size"), ("negative_spacing", "negative voxel size"),
    ("nonfinite_spacing", "NaN / infinite voxel size"), ("image_2d", "2D image where 3D is expected"),
    ("image_4d", "4D image where 3D is expected"), ("geometry_mismatch", "image and label on different grids"),
    ("unknown_label_value", "label value not in dataset.json"), ("non_integer_label", "non-integer label values"),
    ("truncated_image", "truncated .nii.gz (image / prediction)"), ("truncated_label", "truncated .nii.gz (label)"),
    ("missing_channel", "missing channel file"), ("click outside the image", "click outside the image"),
    ("click for a class the model does not have", "click for a class the model does not have"),
    ("positive click on another class's voxels", "positive click on another class's voxels"),
    ("empty_label", "empty label (background only)"),
    ("command line", "one of these through the command (exit 1, one `error:` line naming the file, no traceback)"),
])


def _input_kind(fault: str) -> str:
    """Row of the bad-input matrix: hypothesis kinds keep their name; a '(command line)' run gets its own row."""
    if "(command line)" in fault:
        return "command line"
    return fault.split(" (")[0]


def _cell(rs: list[dict]) -> str:
    errors = sum(r["outcome"].startswith("clear error") for r in rs)
    handled = len(rs) - errors
    parts = ([f"{errors} error"] if errors else []) + ([f"{handled} handled"] if handled else [])
    lost = sum(r["lost"] for r in rs)
    return ", ".join(parts) + (f", **{lost} lost**" if lost else "")


def _inputs_matrix(rows: list[dict]) -> list[str]:
    lines = ["| bad input | " + " | ".join(STAGES) + " |", "|---|" + "---:|" * len(STAGES)]
    kinds = sorted({_input_kind(r["fault"]) for r in rows},
                   key=lambda k: list(KIND_NAMES).index(k) if k in KIND_NAMES else len(KIND_NAMES))
    for kind in kinds:
        cells = []
        for stage in STAGES:
            rs = [r for r in rows if r["stage"] == stage and _input_kind(r["fault"]) == kind]
            cells.append(_cell(rs) if rs else "")
        lines.append(f"| {KIND_NAMES.get(kind, kind)} | " + " | ".join(cells) + " |")
    handled = OrderedDict()
    for r in rows:
        if not r["outcome"].startswith("clear error"):
            handled.setdefault(f"{r['stage']}, {r['fault']}", r["outcome"])
    lines.append("")
    lines.append("\"error\": a clear error naming the file and the problem, nothing partial written. \"handled\": the "
                 "documented behaviour (README \"Guarantees\"):")
    lines += [f"- {k}: {v}" for k, v in handled.items()]
    return lines


def _list(rows: list[dict], details: bool = False) -> list[str]:
    lines = ["| stage | fault | tried | outcome | lost |" + (" where it hit |" if details else ""),
             "|---|---|---:|---|---:|" + ("---|" if details else "")]
    groups: "OrderedDict[tuple, list]" = OrderedDict()
    for r in rows:
        groups.setdefault((r["stage"], r["fault"]), []).append(r)
    for (stage, fault), rs in groups.items():
        outcomes = Counter(r["outcome"] for r in rs)
        outcome = "; ".join(o if n == len(rs) else f"{o} ({n})" for o, n in outcomes.items())
        where = re.sub(r"/\S*/", "", "; ".join(r["detail"] for r in rs if r.get("detail"))).replace("|", "/")
        lines.append(f"| {stage} | {fault} | {len(rs)} | {outcome} | {sum(r['lost'] for r in rs)} |"
                     + (f" {where[:160]} |" if details else ""))
    return lines


def table(records: list[dict], note: str = "") -> str:
    session = records[0]["session"]
    total = len(records)
    lost = sum(r["lost"] for r in records)
    lines = [f"{SECTION}\n",
             "Counted from the records that `tests/test_reliability_{faults,inputs,hostile}.py` append while they run "
             f"(session `{session}`; regenerate with `python -m pytest tests/test_reliability_*.py` then "
             "`python benchmarks/reliability_table.py --write BENCHMARKS.md`). \"Tried\" counts injections, "
             "hypothesis examples (a few per kind, seeded) and parametrised cases. \"Lost\" counts finished outputs, "
             "epochs or checkpoints lost or left corrupt."]
    for suite, title in SUITE_TITLES.items():
        rows = [r for r in records if r["suite"] == suite]
        if not rows:
            continue
        lines.append(f"\n**{title}: {len(rows)}**\n")
        lines += _inputs_matrix(rows) if suite == "inputs" else _list(rows, details=suite == "faults")
    by_suite = ", ".join(f"{sum(r['suite'] == s for r in records)} {t.lower()}" for s, t in SUITE_TITLES.items())
    lines.append(f"\nIn all {total}: {by_suite}. Lost: {lost}.\n")
    if note:
        lines.append(note.strip() + "\n")
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Replace the "## Reliability" section of ``path`` (up to the next "## " heading), or append it."""
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    pattern = re.compile(rf"^{re.escape(SECTION)}\s*$.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(old):
        new = pattern.sub(lambda m: text.rstrip() + "\n\n", old, count=1).rstrip() + "\n"
    else:
        new = (old.rstrip() + "\n\n" if old.strip() else "# Benchmarks\n\n") + text.rstrip() + "\n"
    from sam3d_nnunet.atomic import write_text_atomic
    write_text_atomic(path, new)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", default=DEFAULT_LOG, help=f"records file (default {DEFAULT_LOG})")
    parser.add_argument("--session", default=None, help="session id (default: the latest)")
    parser.add_argument("--write", default=None, metavar="BENCHMARKS.md", help="replace/append the section there")
    parser.add_argument("--note", default="", help="a paragraph appended to the section (e.g. the run time)")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.log):
        print(f"reliability_table: error: {args.log} does not exist: run the reliability tests first",
              file=sys.stderr)
        return 1
    text = table(load(args.log, args.session), args.note)
    if args.write:
        write_section(Path(args.write), text)
        print(f"wrote the {SECTION!r} section of {args.write}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
