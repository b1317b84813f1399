"""Interop: lumi runs out to Hugging Face and llama2.c, Hugging Face LLaMA checkpoints in.

    hf.py              `lumi export --format hf` and `lumi import`: config.json, safetensors,
                       the SentencePiece tokenizer files, the RoPE permutation
    llama2c.py         `lumi export --format llama2c`: run.c's version-0 .bin and tokenizer.bin
    export_command.py  the `lumi export` command
    import_command.py  the `lumi import` command
"""
