"""Data sources (`medlab.contracts.DataSource`) and the skeleton they share.

- `source`: read files (`readers`), collect bad rows (`errors`), hold out validation (`split`), check splits,
  count; `cache`: the tokenized-data cache; `fields`: ``data.fields`` mapping (null = not mapped).
- `registry`: one registry of data formats (name, kinds, columns, detect, normalize); the chat formats are in
  `formats` (rows: `chat_rows`), the prompt format in `prompt_rows`, retrieval formats in `medlab.retrieval.rows`.
- `CausalLMData` (`module`, kind ``chat``): chat templates (`templates`), assistant-only labels (`tokenize`),
  CPT packing (`packing`), padded / padding-free batches (`collate`). Retrieval and prompt data are
  `medlab.retrieval.data.RetrievalData` and `medlab.rl.data.PromptData`.
- `PreferenceData` (`preference`, kind ``preference``): chosen/rejected pairs, unpaired KTO rows and pairs from
  graded judgments; formats in `preference_rows`, tokens and batches in `preference_encode`.
"""

from medlab.data.errors import DataError
from medlab.data.module import CausalLMData
from medlab.data.readers import read_records

__all__ = ["CausalLMData", "DataError", "read_records"]
