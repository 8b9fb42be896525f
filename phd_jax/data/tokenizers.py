"""Tokenizers: `.encode(str) -> list[int]`, `.decode(list[int]) -> str`, `.vocab_size`,
`.bos_id`, `.eos_id`, `.pad_id` (0).

`encode` returns the text's ids only; the pipeline frames every document as
`[BOS] + encode(text) + [EOS]`. Padding is marked by `segment_ids == 0`, not by the id.

Byte-level ids: 0 = padding, 1 = BOS, 2 = EOS, then byte b is id `b + 3` (259 ids; model
vocabularies pad this up, e.g. to 384).
"""

from __future__ import annotations

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
FIRST_ID = 3  # the first id that is not a special token (byte 0 for the byte tokenizer)


class ByteTokenizer:
  """UTF-8 bytes shifted past the three special ids; invalid UTF-8 decodes as U+FFFD."""

  pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID
  vocab_size = FIRST_ID + 256

  def encode(self, text: str) -> list[int]:
    return [b + FIRST_ID for b in text.encode("utf-8", errors="replace")]

  def decode(self, ids) -> str:
    data = bytes(i - FIRST_ID for i in ids if FIRST_ID <= i < self.vocab_size)
    return data.decode("utf-8", errors="replace")

  def reference(self) -> dict:
    """What a checkpoint records to find this tokenizer again."""
    return {"kind": "byte"}
