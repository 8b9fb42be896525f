"""Build the seven zero-shot tasks' JSONL files from their public releases.

  python -m phd_jax.eval.fetch --out=eval_data [--tasks=all] [--releases=DIR]

downloads each task's original release files (the URLs in `RELEASES`, ~190 MB in all, most
of it MMLU's `data.tar`) into `--releases` (default `<out>/releases`), skipping files already
there, and writes `<out>/<task>/<task>.jsonl` in the format `phd_jax.eval.tasks` reads, then
loads every written file with that loader. Without internet, put the release files in
`--releases` by hand (names as in `RELEASES`): nothing is downloaded when they are present.

The prompts follow lm-evaluation-harness (and OLMo): `"Question: ...\\nAnswer:"` for ARC,
PIQA and CommonsenseQA, HellaSwag's cleaned context, MMLU's subject header in cloze form,
WinoGrande's partial scoring; every option starts with one space.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import re
import shutil
import sys
import tarfile
import urllib.request
import zipfile
from typing import Callable, Iterator

from phd_jax.eval import tasks

ARC_ZIP = "https://ai2-public-datasets.s3.amazonaws.com/arc/ARC-V1-Feb2018.zip"
ARC_DIR = "ARC-V1-Feb2018-2"


@dataclasses.dataclass(frozen=True)
class Release:
  url: str  # downloaded under its base name
  convert: Callable[[str], Iterator[dict]]  # releases dir -> our records, in file order
  size: int  # examples in the release (a different count is reported)


def _jsonl(data: bytes, name: str) -> Iterator[dict]:
  for line_number, line in enumerate(data.decode("utf-8").split("\n"), 1):
    if line.strip():
      try:
        yield json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{name}:{line_number}: not JSON ({e})") from None


def _read(releases: str, url: str, member: str | None = None) -> bytes:
  """A release file's bytes, or those of one member of a zip or tar release."""
  path = os.path.join(releases, os.path.basename(url))
  if member is None:
    with open(path, "rb") as f:
      return f.read()
  if path.endswith(".zip"):
    with zipfile.ZipFile(path) as archive:
      return archive.read(member)
  with tarfile.open(path) as archive:
    return archive.extractfile(member).read()


def _question(stem: str) -> str:
  return f"Question: {stem}\nAnswer:"


def _lettered(row: dict) -> dict:
  """ARC and CommonsenseQA: `question.stem`, `question.choices[{label, text}]`, `answerKey`."""
  question = row["question"]
  labels = [c["label"] for c in question["choices"]]
  return {"id": row["id"], "context": _question(question["stem"]),
          "choices": [" " + c["text"] for c in question["choices"]],
          "label": labels.index(row["answerKey"])}


def arc(subset: str) -> Callable[[str], Iterator[dict]]:
  member = f"{ARC_DIR}/ARC-{subset}/ARC-{subset}-Test.jsonl"
  return lambda releases: map(_lettered, _jsonl(_read(releases, ARC_ZIP, member), member))


def _hellaswag_clean(text: str) -> str:
  """lm-eval's HellaSwag preprocessing (WikiHow markup and doubled spaces removed)."""
  text = text.strip().replace(" [title]", ". ")
  text = re.sub(r"\[.*?\]", "", text)
  return text.replace("  ", " ")


HELLASWAG = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"


def hellaswag(releases: str) -> Iterator[dict]:
  rows = _jsonl(_read(releases, HELLASWAG), "hellaswag_val.jsonl")
  for i, row in enumerate(rows):
    context = row["activity_label"] + ": " + row["ctx_a"] + " " + row["ctx_b"].capitalize()
    yield {"id": f"hellaswag-val-{i}", "ind": row["ind"], "source_id": row["source_id"],
           "context": _hellaswag_clean(context),
           "choices": [" " + _hellaswag_clean(e) for e in row["endings"]],
           "label": int(row["label"])}


PIQA = "https://storage.googleapis.com/ai2-mosaic/public/physicaliqa/physicaliqa-train-dev.zip"


def piqa(releases: str) -> Iterator[dict]:
  """The leaderboard's dev set: `dev.jsonl` (id, goal, sol1, sol2) and `dev-labels.lst`."""
  member = "physicaliqa-train-dev/dev.jsonl"
  rows = list(_jsonl(_read(releases, PIQA, member), member))
  labels = _read(releases, PIQA, "physicaliqa-train-dev/dev-labels.lst").decode().split()
  if len(labels) != len(rows):
    raise ValueError(f"PIQA: {member} has {len(rows)} rows, dev-labels.lst {len(labels)}")
  for row, label in zip(rows, labels):
    yield {"id": row["id"], "context": _question(row["goal"]),
           "choices": [" " + row["sol1"], " " + row["sol2"]], "label": int(label)}


WINOGRANDE = "https://storage.googleapis.com/ai2-mosaic/public/winogrande/winogrande_1.1.zip"


def winogrande(releases: str) -> Iterator[dict]:
  """Partial scoring: the options complete the text before `_`, the rest is scored."""
  member = "winogrande_1.1/dev.jsonl"
  for row in _jsonl(_read(releases, WINOGRANDE, member), member):
    sentence = row["sentence"]
    blank = sentence.index("_")
    yield {"id": row["qID"], "context": sentence[:blank],
           "choices": [row["option1"], row["option2"]],
           "continuation": " " + sentence[blank + 1:].strip(),
           "label": int(row["answer"]) - 1, "sentence": sentence}


COMMONSENSE_QA = "https://s3.amazonaws.com/commensenseqa/dev_rand_split.jsonl"


def commonsense_qa(releases: str) -> Iterator[dict]:
  return map(_lettered, _jsonl(_read(releases, COMMONSENSE_QA), "dev_rand_split.jsonl"))


MMLU = "https://people.eecs.berkeley.edu/~hendrycks/data.tar"


def mmlu(releases: str) -> Iterator[dict]:
  """`data/test/<subject>_test.csv` (question, A, B, C, D, answer), subjects sorted."""
  with tarfile.open(os.path.join(releases, os.path.basename(MMLU))) as archive:
    # Members are read, never extracted: their names choose no path on disk. Only regular
    # files count (a folder or link so named has no bytes of its own to read).
    subjects = {match[1]: member for member in archive.getmembers() if member.isfile()
                and (match := re.fullmatch(r"data/test/(\w+)_test\.csv", member.name))}
    if not subjects:
      raise ValueError(f"{archive.name}: no data/test/<subject>_test.csv files")
    for subject, member in sorted(subjects.items()):
      text = archive.extractfile(member).read().decode("utf-8")
      for i, row in enumerate(csv.reader(io.StringIO(text, newline=""))):
        question, *options, answer = row
        yield {"id": f"{subject}-{i}", "subject": subject,
               "context": (f"The following are questions (with answers) about "
                           f"{subject.replace('_', ' ')}.\n\n"
                           f"Question: {question.strip()}\nAnswer:"),
               "choices": [" " + o for o in options], "label": "ABCD".index(answer)}


RELEASES = {
    "mmlu": Release(MMLU, mmlu, 14042),
    "hellaswag": Release(HELLASWAG, hellaswag, 10042),
    "arc_challenge": Release(ARC_ZIP, arc("Challenge"), 1172),
    "arc_easy": Release(ARC_ZIP, arc("Easy"), 2376),
    "piqa": Release(PIQA, piqa, 1838),
    "winogrande": Release(WINOGRANDE, winogrande, 1267),
    "commonsense_qa": Release(COMMONSENSE_QA, commonsense_qa, 1221),
}


def download(url: str, releases: str) -> str:
  """`releases/<base name>`, downloaded unless it is there (written whole or not at all)."""
  path = os.path.join(releases, os.path.basename(url))
  if os.path.isfile(path):
    return path
  os.makedirs(releases, exist_ok=True)
  print(f"downloading {url}", flush=True)
  try:
    with urllib.request.urlopen(url, timeout=60) as response, open(path + ".part", "wb") as f:
      shutil.copyfileobj(response, f)
  except OSError as e:
    raise OSError(f"could not download {url} ({e}); put the file in {releases} by hand "
                  "and run again") from None
  os.replace(path + ".part", path)
  return path


def build(name: str, out: str, releases: str) -> int:
  """Writes `<out>/<name>/<name>.jsonl` from the release files; returns the example count
  after loading the file with the project's task loader."""
  release = RELEASES[name]
  download(release.url, releases)
  path = tasks.task_path(out, name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".part", "w", encoding="utf-8") as f:
    for record in release.convert(releases):
      f.write(json.dumps(record, ensure_ascii=False) + "\n")
  os.replace(path + ".part", path)
  count = len(tasks.load_task(out, name))
  if count != release.size:
    print(f"warning: {name}: {count} examples; the release this was written for has "
          f"{release.size}", file=sys.stderr)
  return count


def main(argv=None) -> None:
  p = argparse.ArgumentParser(prog="python -m phd_jax.eval.fetch", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", required=True, help="evaluation data directory to write")
  p.add_argument("--tasks", default="all", help=f"'all' or a comma list of {', '.join(RELEASES)}")
  p.add_argument("--releases", help="where release files are read from / downloaded to "
                 "(default: <out>/releases)")
  args = p.parse_args(argv)
  names = list(RELEASES) if args.tasks == "all" else [t.strip() for t in args.tasks.split(",")]
  if unknown := [n for n in names if n not in RELEASES]:
    p.error(f"--tasks: unknown {unknown}; choose from all, {', '.join(RELEASES)}")
  releases = args.releases or os.path.join(args.out, "releases")
  for name in names:
    try:
      count = build(name, args.out, releases)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, tarfile.TarError) as e:
      # a missing, truncated or unexpected release file: one line, not a traceback
      raise SystemExit(f"{name}: {type(e).__name__}: {e} (release files in {releases})") \
          from None
    print(f"{tasks.task_path(args.out, name)}: {count} examples")


if __name__ == "__main__":
  main()
