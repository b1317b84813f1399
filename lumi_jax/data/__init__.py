"""Data: sources of text, `lumi prepare` (tokenise and pack), the loader, `lumi data-info`.

    text.py           reading files and normalising text (BOM, CRLF, control characters, UTF-8 errors)
    sources.py        SOURCE strings -> documents: the registry of named sources, files, JSONL, TFDS
    sample_corpus.py  the generated `sample` stories
    prepare.py        `lumi prepare` and `prepare_dataset(...)`: data/NAME/ with tokenizer and token files
    loader.py         `TokenDataset`, `train_batch` (a pure function of seed and step), `validation_batches`
    info.py           `lumi data-info`
"""
