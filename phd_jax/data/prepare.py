"""Local text, JSONL or parquet files -> a tfds dataset in array_record format.

  python -m phd_jax.data.prepare --name=my_corpus --data_dir=/data/tfds \
      --train='corpus/*.jsonl' [--validation='heldout/*.jsonl' | --validation_percent=1] \
      [--text_field=text] [--overwrite]

then train with `--config.data.source=tfds --config.data.name=my_corpus
--config.data.data_dir=/data/tfds`. Every `.jsonl` line and parquet row is a document (its
`--text_field`); any other file is one document; bad JSONL records are skipped, counted by
kind and named in the summary at the end. Without `--validation`, `--validation_percent`
of the documents, chosen by a hash of their key, form the validation split. The library
behind it: `phd_jax.data.text_files`.
"""

from __future__ import annotations

from phd_jax.data import text_files


def main(argv):
  from absl import flags
  del argv
  f = flags.FLAGS
  inputs = {"train": text_files.expand(f.train)}
  if f.validation:
    inputs["validation"] = text_files.expand(f.validation)
  builder = text_files.make_builder(f.name, f.data_dir, inputs, text_field=f.text_field,
                                    validation_percent=f.validation_percent,
                                    version=f.version)
  path = text_files.prepare(builder, overwrite=f.overwrite)
  print(f"prepared {path}")
  for split, info in builder.info.splits.items():
    print(f"  {split}: {info.num_examples} documents")
  print("\n".join(text_files.summary(builder.stats)))


def _define_flags():
  from absl import flags
  flags.DEFINE_string("name", None, "dataset name (lower_snake_case)", required=True)
  flags.DEFINE_string("data_dir", None, "tfds data directory to write into", required=True)
  flags.DEFINE_multi_string("train", None, "globs of training files", required=True)
  flags.DEFINE_multi_string("validation", [], "globs of validation files")
  flags.DEFINE_float("validation_percent", 1.0,
                     "share (%) of documents held out when --validation is not given")
  flags.DEFINE_string("text_field", "text", "JSONL field / parquet column of the text")
  flags.DEFINE_string("version", "1.0.0", "dataset version")
  flags.DEFINE_bool("overwrite", False, "replace an existing dataset of that version")


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
