"""jaxrl_llm: JAX-native, pure-functional post-training of language models."""

import os as _os

# transformers serves us tokenizers and configs only; its advice that PyTorch is missing ("Models
# won't be available") does not apply here and reads like a broken install. A user's own setting
# of the variable wins.
_os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
