"""What every Llama 3 vocabulary shares, whatever file holds it: Meta's pre-split regex and its 256
special tokens (`llama_models.llama3.tokenizer`). `TiktokenTokenizer` encodes with them, and the GGUF
reader rebuilds a file's byte-level vocabulary with the same regex. A leaf: no imports of llama_tf."""

__all__ = ["LLAMA3_PATTERN", "LLAMA3_SPECIAL_TOKENS"]

# Meta's pre-tokenizer: contractions, words with one leading non-letter, 1-3 digits, punctuation runs,
# newlines, and whitespace that leaves its last space to the next word.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_NAMED = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
          "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>",
          "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>"]
LLAMA3_SPECIAL_TOKENS = _NAMED + [f"<|reserved_special_token_{i}|>" for i in range(2, 2 + 256 - len(_NAMED))]
