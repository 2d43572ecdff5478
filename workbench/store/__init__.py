"""The storage layer: everything a stage writes or reads on disk, in one place (the base layer: imports no stage).

* :mod:`.files` -- atomic writes; reading the user's text files (UTF-8, JSONL) with errors naming file and line;
* :mod:`.runs` -- the run folder (``config.yaml``, ``env.json``, ``metrics.jsonl``, ``run.json``): create, resume,
  refuse; :class:`~.runs.RunConfig`, the top-level keys of every recipe;
* :mod:`.shards` -- sharded Parquet with a manifest written last: units, ranks, resume, merge;
* :mod:`.stage` -- starting a stage: open its run folder and say whether its output is already finished;
* :mod:`.beir` -- BEIR folders (corpus, queries, qrels);
* :mod:`.list_rows` -- the list-wise row schema and its one reader.
"""
