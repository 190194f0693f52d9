"""Data for causal-LM training: read files, normalize formats, render chat templates, tokenize with
assistant-only labels, pack and collate. Configs instantiate `CausalLMData` (see conf/data/)."""

from medlab.data.errors import DataError
from medlab.data.module import CausalLMData
from medlab.data.readers import read_records

__all__ = ["CausalLMData", "DataError", "read_records"]
