"""Checkpoint formats, one module each, every one read into a `llama_tf.checkpoint.Checkpoint` (a
`LlamaConfig` and lazily loaded tensors under Meta's names). Hugging Face's and Meta's layouts are still
read in `llama_tf.checkpoint`; GGUF (read and written) is the first format here."""
