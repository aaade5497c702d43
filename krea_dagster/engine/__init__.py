"""The engine: prompt batches to paid-once Krea jobs to verified images, with no Dagster import.

The Dagster surface (resource, assets, checks, metadata, sensors, schedules, component) sits
flat at the package root and calls into this package; this package never imports Dagster
(``tests/test_layers.py`` fails if it does), so the same steps run in a run worker, in the
sensor daemon, in scripts and in tests.

- ``source``: prompt files of a folder, one batch per file (or per ``batch`` value).
- ``names``: the full-match rules of names users give (batches, prefixes, steps).
- ``table_rules``: what a prompt table may hold (reserved names, exact numbers, references).
- ``prompts``: validation against the model catalog, ``prompt_key``, cost estimates.
- ``catalogs``: which model catalog validates a batch (the backend's live one, cached in the
  ledger database, else the bundled one).
- ``settings``: what the engine reads of a Krea account (``KreaAccount``).
- ``ledger``: the durable record of every submission (schema, records, queries).
- ``submit``: claim, POST, record; each POST on one of the account's submit lanes.
- ``reconcile``: the only reconciliation of submissions whose outcome is unknown.
- ``cancel``: the only place that cancels jobs (termination, poll timeout).
- ``errors``: the engine's exception tree and its error codes.
- ``run``: run the engine's coroutines from synchronous code.
- ``references``: reference images from anywhere, each file uploaded once.
- ``template``: prompt templates over a table row's columns.
- ``nodes``: workflow steps over the rows of a table, chained step to step.
- ``collect``: poll pending jobs, download, verify and store images.
- ``paths``: the one root relative store, ledger and prompt paths resolve against.
- ``continuity``: the warning when a new ledger sits next to stored images.
- ``store``: the content-addressed image store (local or ``s3://``).
- ``gallery``: the HTML page of a batch's images, beside them in the store.
- ``gallery_server``: local stores served on loopback, so gallery links open from the UI.
- ``manifest``: the manifest DataFrame of a batch generation.
- ``pipeline``: one instance's steps, composed from the above.
- ``crashpoints``: named places where the crash tests kill a worker.
"""
