"""Damage for checkpoint tests: what bit rot does to a file."""

import pathlib


def flip_a_bit(path) -> None:
  """Flip the lowest bit of one byte of `path`, keeping its size: in a JSON file its last
  digit (still valid JSON, only another number: nothing but a checksum notices), else the
  middle byte."""
  path = pathlib.Path(path)
  data = bytearray(path.read_bytes())
  digits = [i for i, b in enumerate(data) if chr(b).isdigit()]
  data[digits[-1] if path.suffix == ".json" else len(data) // 2] ^= 1
  path.write_bytes(bytes(data))
