"""tinygpt: from raw text to a small GPT language model you trained yourself."""

__version__ = "0.1.0"
