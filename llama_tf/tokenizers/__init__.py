"""Every kind of LLaMA tokenizer behind one interface, `Tokenizer` (`llama_tf.tokenizers.tokenizer`).

- `sentencepiece_tokenizer`: LLaMA 1 and 2's SentencePiece model as TensorFlow ops (notebook 01);
  `sentencepiece_library`: the same through the `sentencepiece` library, where TensorFlow is not installed;
- `tiktoken_tokenizer`: Llama 3's `tokenizer.model` (byte-level BPE over tiktoken ranks);
- `hf_tokenizer`: a Hugging Face `tokenizer.json`;
- `embedded_tokenizers`: the vocabulary inside a GGUF file or llama2.c's `tokenizer.bin`;
- `search`: which tokenizer goes with a checkpoint.

`Tokenizer(path)` opens the kind a file holds. The factory and the kinds import each other (the kinds
subclass `Tokenizer`; `Tokenizer(path)` picks a kind): that circle stays inside this package. Nothing
here imports Keras or the layers; `formats` is imported to read the vocabularies that model files carry."""
