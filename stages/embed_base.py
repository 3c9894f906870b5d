"""embed_base: the base model's vectors of every text the later stages read, each encoded once.

Texts: make_triplets' train sample (titles and abstracts: every train kind, mining's corpus and the
classifier's slice come from it), evaluate's stratified test sample (titles and abstracts) and the
test triplets. Writes data/embeddings/base (texts.parquet + vectors.npy + encoder.json, a DVC-cached output),
data/embeddings/base-train.sha256 (its train sample's part: finetune's dependency), metrics/embed_base.json and
metrics/runtime/embed_base.json (reuse, speed). finetune (adapter training, hard-negative mining), evaluate_base and, in
adapter mode, evaluate read it, so a finetune-only change encodes nothing. Finished chunks are kept
in a folder of the run's own in data/embeddings/chunks until the stage completes: a killed run resumes where it
stopped (the two newest stopped runs' folders are kept, older ones deleted). Each run's
vectors are also kept in data/embeddings/reuse (per encoder key: the model's files, settings, precision,
libraries and code), with earlier runs' others up to embed_base.reuse_max_texts texts in all, so a rerun for
another sample size or seed encodes only the texts no recent run encoded. Both folders
are the project root's, also for a `dvc exp run --temp` or queued sweep point working in a temporary copy that
DVC deletes: a point killed there resumes from its chunks when run again, and its vectors serve the next point.
"""

from __future__ import annotations

import json
import time

from arxiv_embed import paths
from arxiv_embed.embeddings import (TextVectors, chunk_folder, distinct_texts, embed_texts_reusing, encode_counted, encode_precision,
                                    encoder_key, keep_for_reuse, prune_reuse_stores, reuse_folder)
from arxiv_embed.errors import run
from arxiv_embed.evaluation.data import load_eval_data
from arxiv_embed.files import atomic_path, read_table, write_json, write_text
from arxiv_embed.models import load_model, resolve_model
from arxiv_embed.schema.base import load
from arxiv_embed.schema.embed_base import EmbedBaseParams


def main() -> None:
    # 1. Params, and the texts: the train sample's and evaluate's.
    params = load(EmbedBaseParams)
    cfg = params.embed_base
    train = read_table(paths.TRAIN_SAMPLE, ["title", "abstract"], "make_triplets")
    # The classifier's slice (evaluate.max_train_papers) is drawn from the train sample read above: taking all of
    # it encodes the same texts whatever that size, so changing it re-encodes nothing.
    data = load_eval_data(params.evaluate.max_test_papers, train.height, params.shared.seed)
    texts = distinct_texts([train["abstract"], train["title"], *data.columns()])
    print(f"embed_base: {len(texts):,} distinct texts ({train.height:,} train sample papers, "
          f"{data.test.height:,} test sample papers, {data.triplets.height:,} test triplets)", flush=True)

    # 2. Encode in resumable chunks, taking the vectors recent runs kept under the same encoder key (the model's
    # files, settings, precision, libraries and code: one name can hold other weights), then write the output.
    model = load_model(params.model.base, params.model.max_seq_length, params.model.trust_remote_code, backend=cfg.backend)
    key = encoder_key(resolve_model(params.model.base), params.model.max_seq_length, cfg.backend, encode_precision(model))
    store = reuse_folder(paths.kept_between_runs(paths.EMBED_REUSE), key)
    started = time.monotonic()
    # int8 scales each batch's activations by the batch: a text's vector depends on its batch-mates, so another run's
    # vectors are not this run's bits, and no store is read or kept (a killed run's chunks still resume: same batches).
    reusable = cfg.backend != "int8"
    with chunk_folder(paths.kept_between_runs(paths.EMBED_WORK), key, texts, what="embed_base") as work_dir:  # deleted once kept
        if reusable:
            vectors, reused, resumed = embed_texts_reusing(model, texts, store, work_dir, key, cfg.batch_size, cfg.chunk_size,
                                                           what="embed_base")
        else:
            encoded, resumed = encode_counted(model, texts, work_dir, key, cfg.batch_size, cfg.chunk_size, what="embed_base")
            vectors, reused = TextVectors(texts, encoded), 0
        seconds = time.monotonic() - started
        with atomic_path(paths.BASE_EMBEDDINGS) as tmp:
            vectors.save(tmp, key)
        # finetune reads only the train sample's vectors: its dependency, so a test-sample change does not retrain.
        write_text(paths.BASE_TRAIN_FINGERPRINT, vectors.fingerprint(distinct_texts([train["abstract"], train["title"]])) + "\n")
        if reusable and (older := keep_for_reuse(paths.BASE_EMBEDDINGS, store, cfg.reuse_max_texts)):
            print(f"embed_base: {store} keeps this run's {len(texts):,} texts' vectors and {older:,} of earlier runs' "
                  f"(embed_base.reuse_max_texts: {cfg.reuse_max_texts:,})", flush=True)
    if stale := prune_reuse_stores(store):
        print(f"embed_base: deleted {len(stale)} older stores of vectors made by another model, its settings, a library or "
              f"this code's version ({', '.join(path.name for path in stale)}); the two newest others, and any in use, stay", flush=True)
    write_json(paths.metrics_file("embed_base"), {
        "texts": len(texts), "train_sample_papers": train.height, "test_sample_papers": data.test.height,
        "device": str(model.device), "backend": cfg.backend, "model_files_sha256": json.loads(key)["files_sha256"],
    })
    # How this run went (what earlier runs' stores and a killed run's chunks gave, how fast it encoded the rest): the
    # runtime record, not the summary above.
    encoded = len(texts) - reused - resumed
    write_json(paths.runtime_file("embed_base"), {
        "reused_texts": reused, "resumed_texts": resumed, "encode_seconds": round(seconds, 1),
        "texts_per_second": round(encoded / seconds, 1) if seconds and encoded else None,  # None: nothing encoded now
    })


if __name__ == "__main__":
    run(main, "embed_base")
