"""The job layer that the API and the workers share: a job's record in Redis, its
folder on the data volume, its work on the RQ queues.

One module per noun, as rq has them: ``record`` (the job and its parameters),
``keys`` (every Redis key and RQ job id), ``folders`` (the job folder's layout),
``store`` (records, status changes, quota, idempotency, progress), ``queue``
(lanes, enqueueing, cancelling, live workers), ``cleaner`` (stalled and expired
jobs), ``stats`` (the figures workers leave for /metrics), ``outbox`` (a job's
webhook events, written into Redis), ``webhooks`` (the events POSTed to their owner,
signed), ``settings`` (what both processes read) and
``logs``. Nothing here imports FastAPI or torch.

A job is split into shards of at most ``shard_size`` images and ``shard_pixels``
pixels (``pureebm.shards.cut_shards``). Each shard is one RQ job
(``worker.tasks.purify_shard``) and a finalising RQ job (``worker.tasks.finalize``)
that depends on all of them assembles the result.

A job with an energy filter runs two phases, since every image's energy is
needed before any is purified: one scoring RQ job per shard
(``worker.tasks.score_shard``), then a selecting job (``worker.tasks.select``)
that depends on them, ranks the energies, writes the selection and only then
queues the purification shards (the selected images of each shard) and the
finalising job. Every file a phase writes appears atomically, so either phase
can be retried.

Fair share: a job's RQ jobs go to its owner's lane, one of BATCH_LANES queues
(``pureebm-lane-<n>``, the owner's key hash modulo their number). Workers take the
lanes in turn (``worker.main.LeasedWorker.reorder_queues``), so a tenant with
thousands of shards queued delays another tenant's next shard by at most one
shard per lane, not by its whole backlog. Synchronous requests have their own
queue, ``pureebm-sync``, which workers always look at first. Redis keys (``keys``):

    pureebm:job:<id>            hash: the JobRecord fields
    pureebm:job:<id>:progress   hash: shard index -> images done in that shard
    pureebm:owner:<owner>       sorted set: the owner's job ids by creation time
    pureebm:idem:<owner>:<key>  the job id created under an Idempotency-Key
    pureebm:states              hash: job id -> status (for /metrics)
    pureebm:canceled            counter: jobs canceled (for /metrics)
    pureebm:webhooks:due        sorted set: webhook deliveries by their next attempt's time
    pureebm:webhook:<id>        hash: one delivery (its URL, owner, job, event, body, attempts)
    pureebm:webhooks:progress   hash: job id -> its done count at its last progress event
    pureebm:webhook-throttle:<id>  a job's progress events, at most one per interval
    pureebm:stats:webhooks      hash: deliveries delivered and failed (counters)

Job folder (``<data_dir>/jobs/<id>/``): ``input/<file>``, ``decoded.npz`` (the
images the API decoded while validating, up to ``max_decoded_bytes``),
``shards/<i>.npz``, ``result/<name>``, ``report.json`` and ``preview.png``; with a filter also
``shards/score-<i>.npy`` (each shard's energies) and ``selection.npz`` (the chosen
positions, and where each purification shard starts among them).
"""
