"""phd_jax.eval.fetch: each task's release files, in the release's own format, become the
JSONL records the task loader reads; downloads happen once; the real releases beside the
repository give the shipped evaluation data byte for byte."""

import gzip
import io
import json
import os
import tarfile
import urllib.error
import urllib.request
import zipfile

import pytest

from eval_helpers import REAL_EVAL_DATA
from phd_jax.eval import fetch
from phd_jax.eval.tasks import TASKS, load_task


def jsonl(rows) -> bytes:
  return "".join(json.dumps(r) + "\n" for r in rows).encode()


def zipped(members: dict) -> bytes:
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w") as archive:
    for name, data in members.items():
      archive.writestr(name, data)
  return buffer.getvalue()


def tarred(members: dict) -> bytes:
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w") as archive:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      archive.addfile(info, io.BytesIO(data))
  return buffer.getvalue()


def lettered(id_, stem, choices, key):
  return {"id": id_, "question": {"stem": stem, "choices": [
      {"text": text, "label": label} for label, text in choices]}, "answerKey": key}


ARC = "ARC-V1-Feb2018-2/ARC-{0}/ARC-{0}-Test.jsonl"
# Release file name -> bytes, in each release's own format.
RELEASE_FILES = {
    "ARC-V1-Feb2018.zip": zipped({
        ARC.format("Easy"): jsonl([lettered("E1", "Which is a gas?",
                                            [("1", "ice"), ("2", "steam"), ("3", "wood")], "2")]),
        ARC.format("Challenge"): jsonl([lettered("C1", "Pick five.", list(zip("ABCDE", "12345")),
                                                 "E")])}),
    "hellaswag_val.jsonl": jsonl([
        {"ind": 4, "activity_label": "Clean and jerk", "ctx_a": "A lady lifts.",
         "ctx_b": "then THE lady", "ctx": "", "split": "val", "split_type": "zeroshot",
         "label": 1, "endings": ["drops it.", " rests  a bit. "], "source_id": "activitynet~v_1"},
        {"ind": 4, "activity_label": "Home", "ctx_a": "[header] How to clean [title] Wet it.",
         "ctx_b": "", "ctx": "", "split": "val", "split_type": "indomain", "label": "0",
         "endings": ["Rinse [step] twice.", "Stop."], "source_id": "wikihow~2"}]),
    "physicaliqa-train-dev.zip": zipped({
        "physicaliqa-train-dev/dev.jsonl": jsonl([
            {"id": "p-1", "goal": "Open a jar", "sol1": "twist the lid ", "sol2": "eat the lid"},
            {"id": "p-2", "goal": "Dry hands", "sol1": "wet them", "sol2": "use a towel"}]),
        "physicaliqa-train-dev/dev-labels.lst": b"0\n1\n"}),
    "winogrande_1.1.zip": zipped({"winogrande_1.1/dev.jsonl": jsonl([
        {"qID": "w-1", "sentence": "Ann helped Bo because _ was  stuck. ", "option1": "Ann",
         "option2": "Bo", "answer": "2"}])}),
    "dev_rand_split.jsonl": jsonl([lettered("q1", "Where are books?",
                                            list(zip("ABCDE", ["shelf", "sea", "sky", "sun",
                                                               "soup"])), "A")]),
    "data.tar": tarred({
        "data/test/college_physics_test.csv": b'"What is 2, plus\n2?",4,5,6,7,A\n',
        "data/test/anatomy_test.csv": b"Bones?,206,12,3,1,A\nHeart chambers?,1,2,3,4,D\n",
        "data/dev/anatomy_dev.csv": b"Not a test row?,a,b,c,d,A\n"}),
}

EXPECTED = {
    "arc_easy": [{"id": "E1", "context": "Question: Which is a gas?\nAnswer:",
                  "choices": [" ice", " steam", " wood"], "label": 1}],
    "arc_challenge": [{"id": "C1", "context": "Question: Pick five.\nAnswer:",
                       "choices": [" 1", " 2", " 3", " 4", " 5"], "label": 4}],
    "hellaswag": [
        {"id": "hellaswag-val-0", "ind": 4, "source_id": "activitynet~v_1",
         "context": "Clean and jerk: A lady lifts. Then the lady",
         "choices": [" drops it.", " rests a bit."], "label": 1},
        {"id": "hellaswag-val-1", "ind": 4, "source_id": "wikihow~2",
         "context": "Home: How to clean. Wet it.",
         "choices": [" Rinse twice.", " Stop."], "label": 0}],
    "piqa": [{"id": "p-1", "context": "Question: Open a jar\nAnswer:",
              "choices": [" twist the lid ", " eat the lid"], "label": 0},
             {"id": "p-2", "context": "Question: Dry hands\nAnswer:",
              "choices": [" wet them", " use a towel"], "label": 1}],
    "winogrande": [{"id": "w-1", "context": "Ann helped Bo because ", "choices": ["Ann", "Bo"],
                    "continuation": " was  stuck.", "label": 1,
                    "sentence": "Ann helped Bo because _ was  stuck. "}],
    "commonsense_qa": [{"id": "q1", "context": "Question: Where are books?\nAnswer:",
                        "choices": [" shelf", " sea", " sky", " sun", " soup"], "label": 0}],
    "mmlu": [
        {"id": "anatomy-0", "subject": "anatomy", "context": "The following are questions "
         "(with answers) about anatomy.\n\nQuestion: Bones?\nAnswer:",
         "choices": [" 206", " 12", " 3", " 1"], "label": 0},
        {"id": "anatomy-1", "subject": "anatomy", "context": "The following are questions "
         "(with answers) about anatomy.\n\nQuestion: Heart chambers?\nAnswer:",
         "choices": [" 1", " 2", " 3", " 4"], "label": 3},
        {"id": "college_physics-0", "subject": "college_physics", "context": "The following "
         "are questions (with answers) about college physics.\n\nQuestion: What is 2, plus\n2?"
         "\nAnswer:", "choices": [" 4", " 5", " 6", " 7"], "label": 0}],
}


def write_releases(folder, files):
  os.makedirs(folder, exist_ok=True)
  for name, data in files.items():
    with open(os.path.join(folder, name), "wb") as f:
      f.write(data)


@pytest.fixture
def no_network(monkeypatch):
  def refuse(url, timeout=None):
    raise urllib.error.URLError(f"no network for {url}")
  monkeypatch.setattr(urllib.request, "urlopen", refuse)


def records(out, name):
  with open(os.path.join(out, name, f"{name}.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_every_release_format_becomes_loadable_records(tmp_path, no_network):
  releases, out = str(tmp_path / "releases"), str(tmp_path / "eval_data")
  write_releases(releases, RELEASE_FILES)
  fetch.main(["--out", out, "--releases", releases])
  assert set(EXPECTED) == set(TASKS) == set(fetch.RELEASES)
  for name, expected in EXPECTED.items():
    assert records(out, name) == expected, name
    examples = load_task(out, name)
    assert [(e.id, e.context, list(e.choices), e.label, e.continuation) for e in examples] == [
        (r["id"], r["context"], r["choices"], r["label"], r.get("continuation"))
        for r in expected]


def test_downloads_missing_release_files_once(tmp_path, monkeypatch):
  served = {fetch.RELEASES[name].url: RELEASE_FILES[os.path.basename(fetch.RELEASES[name].url)]
            for name in ("piqa", "commonsense_qa")}
  requested = []

  def urlopen(url, timeout=None):
    requested.append(url)
    return io.BytesIO(served[url])
  monkeypatch.setattr(urllib.request, "urlopen", urlopen)
  out = str(tmp_path / "eval_data")
  for _ in range(2):
    fetch.main(["--out", out, "--tasks=piqa,commonsense_qa"])
  assert sorted(requested) == sorted(served)
  assert sorted(os.listdir(os.path.join(out, "releases"))) == sorted(
      os.path.basename(url) for url in served)
  assert records(out, "piqa") == EXPECTED["piqa"]


def test_unreachable_or_malformed_release_is_one_line(tmp_path, no_network):
  releases = str(tmp_path / "releases")
  with pytest.raises(SystemExit, match=r"hellaswag: .*could not download https://raw\."
                     r"githubusercontent\.com/rowanz/hellaswag/.*by hand"):
    fetch.main(["--out", str(tmp_path / "out"), "--releases", releases, "--tasks=hellaswag"])
  write_releases(releases, {"physicaliqa-train-dev.zip": zipped({
      "physicaliqa-train-dev/dev.jsonl": jsonl([{"id": "1", "goal": "g", "sol1": "a",
                                                 "sol2": "b"}] * 2),
      "physicaliqa-train-dev/dev-labels.lst": b"0\n"})})
  with pytest.raises(SystemExit, match="piqa: ValueError: .*2 rows, dev-labels.lst 1"):
    fetch.main(["--out", str(tmp_path / "out"), "--releases", releases, "--tasks=piqa"])
  with pytest.raises(SystemExit):
    fetch.main(["--out", str(tmp_path / "out"), "--tasks=piqa,boolq"])


def test_mmlu_members_are_read_never_extracted(tmp_path, no_network):
  """Only regular files named data/test/<word>_test.csv count: a folder or link so named,
  or a name that climbs out, neither fails the build nor writes anything."""
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w") as archive:
    with tarfile.open(fileobj=io.BytesIO(RELEASE_FILES["data.tar"])) as good:
      for member in good.getmembers():
        archive.addfile(member, good.extractfile(member))
    for name, kind, target in [("data/test/folder_test.csv", tarfile.DIRTYPE, ""),
                               ("data/test/link_test.csv", tarfile.SYMTYPE, "../../../outside"),
                               ("data/test/hard_test.csv", tarfile.LNKTYPE, "/etc/hostname")]:
      info = tarfile.TarInfo(name)
      info.type, info.linkname = kind, target
      archive.addfile(info)
    climbing = b"Escaped?,a,b,c,d,A\n"
    info = tarfile.TarInfo("data/test/../../../outside_test.csv")
    info.size = len(climbing)
    archive.addfile(info, io.BytesIO(climbing))
  releases, out = tmp_path / "releases", tmp_path / "eval_data"
  write_releases(releases, {"data.tar": buffer.getvalue()})
  fetch.main(["--out", str(out), "--releases", str(releases), "--tasks=mmlu"])
  assert records(out, "mmlu") == EXPECTED["mmlu"]
  assert sorted(os.listdir(tmp_path)) == ["eval_data", "releases"]
  assert sorted(os.listdir(out)) == ["mmlu"] and os.listdir(out / "mmlu") == ["mmlu.jsonl"]


def real_release_files(root) -> dict:
  """The release files rebuilt from the originals kept beside the shipped data (the same
  files, unpacked; PIQA's ids come from the leaderboard copy of dev.jsonl)."""
  def read(*parts):
    with open(os.path.join(root, *parts), "rb") as f:
      return f.read()
  piqa_ids = [json.loads(line)["id"] for line in read("piqa", "piqa.jsonl").split(b"\n")
              if line]
  piqa_rows = [json.loads(line) for line in read("piqa", "original", "valid.jsonl").split(b"\n")
               if line]
  mmlu = os.path.join(root, "mmlu", "original", "test")
  return {
      "ARC-V1-Feb2018.zip": zipped({ARC.format(s): read(f"arc_{s.lower()}", "original",
                                                        f"ARC-{s}-Test.jsonl")
                                    for s in ("Easy", "Challenge")}),
      "hellaswag_val.jsonl": gzip.decompress(read("hellaswag", "original",
                                                  "hellaswag_val.jsonl.gz")),
      "physicaliqa-train-dev.zip": zipped({
          "physicaliqa-train-dev/dev.jsonl": jsonl({"id": i, **r}
                                                   for i, r in zip(piqa_ids, piqa_rows)),
          "physicaliqa-train-dev/dev-labels.lst": read("piqa", "original", "valid-labels.lst")}),
      "winogrande_1.1.zip": zipped({"winogrande_1.1/dev.jsonl": read("winogrande", "original",
                                                                     "dev.jsonl")}),
      "dev_rand_split.jsonl": read("commonsense_qa", "original", "dev_rand_split.jsonl"),
      "data.tar": tarred({f"data/test/{name}": read("mmlu", "original", "test", name)
                          for name in os.listdir(mmlu)}),
  }


@pytest.mark.skipif(not os.path.isdir(os.path.join(REAL_EVAL_DATA, "mmlu", "original")),
                    reason="the real evaluation data is not beside the repository")
def test_real_releases_give_the_shipped_files(tmp_path, no_network):
  releases, out = str(tmp_path / "releases"), str(tmp_path / "eval_data")
  write_releases(releases, real_release_files(REAL_EVAL_DATA))
  fetch.main(["--out", out, "--releases", releases])
  for name in TASKS:
    with open(os.path.join(out, name, f"{name}.jsonl"), "rb") as ours, \
         open(os.path.join(REAL_EVAL_DATA, name, f"{name}.jsonl"), "rb") as shipped:
      assert ours.read() == shipped.read(), name
