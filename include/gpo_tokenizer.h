/* gpo_tokenizer.h - (being written) */
