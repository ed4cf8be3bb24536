"""Provenance: watermark what we serve and prove it afterwards."""

from distillwatch.provenance.detect import TextResult, detect_texts
from distillwatch.provenance.tokens import MarkedWriter, TokenizerFile, WordTokenizer
from distillwatch.provenance.watermark import (
    Detection,
    Keyring,
    WatermarkKey,
    binomial_test,
    detect,
    watermark_logits,
)

__all__ = ["Detection", "Keyring", "MarkedWriter", "TextResult", "TokenizerFile", "WatermarkKey",
           "WordTokenizer", "binomial_test", "detect", "detect_texts", "watermark_logits"]  # fmt: skip
